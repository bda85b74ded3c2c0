"""memreg.cli: the `memreg` command line (thin commands over the SDK and registry)."""
