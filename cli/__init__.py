"""distnode's command line: parses arguments and delegates to `node`."""
