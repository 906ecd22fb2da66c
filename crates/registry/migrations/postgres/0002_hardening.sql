-- Hardening (issue 9). PostgreSQL's BIGINT columns already refuse anything but integers.

-- Farm names are unique whatever their case: "acme" and "ACME" would be one farm to a person.
CREATE UNIQUE INDEX farms_name_nocase ON farms(lower(name));
