-- Version 2: change notices between processes (see notify.rs). NOTIFY is
-- sent when the transaction commits, once per channel however many rows it
-- changed.
CREATE FUNCTION rouse_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify(TG_ARGV[0], '');
    RETURN NULL;
END;
$$;
CREATE TRIGGER services_notify AFTER INSERT OR UPDATE OR DELETE ON services
    FOR EACH STATEMENT EXECUTE FUNCTION rouse_notify('rouse_services');
CREATE TRIGGER routing_notify AFTER INSERT OR UPDATE OR DELETE ON routing
    FOR EACH STATEMENT EXECUTE FUNCTION rouse_notify('rouse_services');
CREATE TRIGGER revisions_notify_services AFTER INSERT OR DELETE ON revisions
    FOR EACH STATEMENT EXECUTE FUNCTION rouse_notify('rouse_services');
CREATE TRIGGER revisions_notify AFTER INSERT OR UPDATE OR DELETE ON revisions
    FOR EACH STATEMENT EXECUTE FUNCTION rouse_notify('rouse_revisions');
CREATE TRIGGER builds_notify AFTER INSERT OR UPDATE OF cancel_requested ON builds
    FOR EACH STATEMENT EXECUTE FUNCTION rouse_notify('rouse_builds');
