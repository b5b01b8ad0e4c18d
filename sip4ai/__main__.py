from sip4ai.cli import main


raise SystemExit(main())
