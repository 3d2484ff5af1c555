import sys

from frontend.http.app import main

sys.exit(main())
