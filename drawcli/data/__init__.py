"""data: the data sets and their files.

Owns the catalogue of known data sets (catalogue: names, files, checksums, splits), reading
them into arrays (loading, formats), the user's own picture folders (folders), the two-digit set
built from MNIST (twodigit), and fetching and verifying the files (download).

Layer: above core. May import drawcli.core only.
"""
