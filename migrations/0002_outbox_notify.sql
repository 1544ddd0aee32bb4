-- Wake the outbox relay when events are written: one notification per inserting statement
-- (statement-level trigger), and PostgreSQL folds identical notifications of one transaction
-- into one. The relay also polls, so a missed notification only delays publication.
CREATE OR REPLACE FUNCTION outbox_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('orders_outbox', '');
    RETURN NULL;
END;
$$;

CREATE TRIGGER outbox_notify
    AFTER INSERT ON outbox
    FOR EACH STATEMENT EXECUTE FUNCTION outbox_notify();
