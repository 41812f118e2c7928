"""The command line (``claimgate``), above the parts: it imports the gateway, the worker and the load tools;
none of them imports it."""
