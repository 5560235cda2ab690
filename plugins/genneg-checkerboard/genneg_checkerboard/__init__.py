"""The 2-D checkerboard experiment of Gen-neG (Sec. 4.1, App. B.1) as a genneg plugin."""
