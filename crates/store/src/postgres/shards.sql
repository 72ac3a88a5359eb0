-- Version 4: several active dispatchers share the services, each holding
-- the leases of its own. An execution names the dispatcher that runs it:
-- the fence every update checks. A question recorded by a dispatcher that
-- does not hold its service's lease (on the shared network topic) is
-- announced to the holder.
ALTER TABLE executions ADD COLUMN dispatcher TEXT;
CREATE FUNCTION rouse_notify_handover() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('rouse_handover', NEW.service_uuid);
    RETURN NULL;
END;
$$;
CREATE TRIGGER executions_handover AFTER INSERT ON executions
    FOR EACH ROW WHEN (NEW.dispatcher IS NULL AND NEW.status = 'queued')
    EXECUTE FUNCTION rouse_notify_handover();
