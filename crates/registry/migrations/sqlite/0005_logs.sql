-- Log requests. A contract holds the twin's latest log request (its signed RequestLogs
-- envelope, sealed to the node) and the node's answer to it (its signed Logs envelope,
-- sealed to the twin); the registry reads neither. One request is outstanding per contract:
-- a newer one replaces it, and an answer is taken only for the request outstanding.
ALTER TABLE contracts ADD COLUMN log_request_id INTEGER;
ALTER TABLE contracts ADD COLUMN log_request BLOB;
ALTER TABLE contracts ADD COLUMN log_answer_id INTEGER;
ALTER TABLE contracts ADD COLUMN log_answer BLOB;
