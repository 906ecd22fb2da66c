-- What the grid looked like over time, for the web page's charts: one row per sampling slot
-- (the slot's start time), written by whichever registry replica gets there first.
CREATE TABLE grid_samples (
    at        INTEGER PRIMARY KEY,
    nodes     INTEGER NOT NULL,
    nodes_up  INTEGER NOT NULL,
    cu_up     REAL NOT NULL,
    su_up     REAL NOT NULL
);
