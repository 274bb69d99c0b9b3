import sys

from gradchain.demo import main

sys.exit(main())
