from reasonloop.cli import main

raise SystemExit(main())
