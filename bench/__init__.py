"""`make bench`: how fast the mail engine and the screens are, on real servers on loopback.

`python -m bench` runs one suite per database (SQLite always, PostgreSQL when DATABASE_URL
is set), each in its own process since Django is configured once a process, and prints one
table, also written as JSON under bench/results/. A row is a function that takes the
suite's `Bench` and returns a `Row` (see bench/rows/__init__.py): adding one is adding a
function and a line in ROWS.
"""
