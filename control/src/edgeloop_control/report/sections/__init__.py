"""One module per section of the page; each returns escaped HTML for its ``<section>``."""
