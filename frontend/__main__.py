import sys

from frontend.http import main

sys.exit(main())
