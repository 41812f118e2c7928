from claimgate.cli import main

raise SystemExit(main())
