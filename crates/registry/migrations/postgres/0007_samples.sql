-- What the grid looked like over time, for the web page's charts: one row per sampling slot
-- (the slot's start time), written by whichever registry replica gets there first.
CREATE TABLE grid_samples (
    at        BIGINT PRIMARY KEY,
    nodes     BIGINT NOT NULL,
    nodes_up  BIGINT NOT NULL,
    cu_up     DOUBLE PRECISION NOT NULL,
    su_up     DOUBLE PRECISION NOT NULL
);
