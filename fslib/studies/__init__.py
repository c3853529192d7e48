"""Each notebook's experiment, built from :mod:`fslib.protocols` and the registered methods: which arms,
sweeps and analyses a paper's claims and figures need, and the figures only that notebook draws. Methods
(:mod:`fslib.methods`) import nothing from here."""
