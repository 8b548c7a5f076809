"""The statuses every desk starts with (SysAid's defaults, in their order)."""

DEFAULT_STATUSES: list[tuple[str, int, bool]] = [
    ("New", 10, False),
    ("Open", 20, False),
    ("In Progress", 30, False),
    ("User Responded", 40, False),
    ("Closed", 90, True),
]
