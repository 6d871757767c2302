-- The capture's core: the pending table, the outbox writer and its NOTIFY. trigger_capture._core_sql fills in
-- the contract's schema version, this TimeTracker's source name and the relay's NOTIFY channel.
CREATE UNLOGGED TABLE IF NOT EXISTS ttsync_capture_pending (
  txid xid8 NOT NULL,
  aggregatetype text NOT NULL,
  aggregateid text NOT NULL,
  before_state jsonb,
  PRIMARY KEY (txid, aggregatetype, aggregateid)
);

CREATE OR REPLACE FUNCTION ttsync_capture_note(p_type text, p_id text) RETURNS void
LANGUAGE plpgsql SET search_path FROM CURRENT AS $fn$
BEGIN
  IF p_id IS NULL THEN RETURN; END IF;
  IF EXISTS (SELECT 1 FROM ttsync_capture_pending
             WHERE txid = pg_current_xact_id() AND aggregatetype = p_type AND aggregateid = p_id) THEN
    RETURN;
  END IF;
  -- Serialise transactions on one aggregate: versions then follow commit order.
  PERFORM ttsync_lock_root(p_type, p_id);
  INSERT INTO ttsync_capture_pending (txid, aggregatetype, aggregateid, before_state)
  VALUES (pg_current_xact_id(), p_type, p_id, ttsync_snapshot(p_type, p_id));
END
$fn$;

CREATE OR REPLACE FUNCTION ttsync_capture_row() RETURNS trigger
LANGUAGE plpgsql SET search_path FROM CURRENT AS $fn$
DECLARE
  v_new jsonb;
  v_old jsonb;
BEGIN
  -- TG_ARGV[0] = aggregate type, TG_ARGV[1] = column holding the aggregate id.
  IF TG_OP <> 'DELETE' THEN v_new := to_jsonb(NEW); END IF;
  IF TG_OP <> 'INSERT' THEN v_old := to_jsonb(OLD); END IF;
  PERFORM ttsync_capture_note(TG_ARGV[0], COALESCE(v_new, v_old) ->> TG_ARGV[1]);
  IF TG_OP = 'UPDATE' AND (v_old ->> TG_ARGV[1]) IS DISTINCT FROM (v_new ->> TG_ARGV[1]) THEN
    -- An item moved to another invoice changes both invoices.
    PERFORM ttsync_capture_note(TG_ARGV[0], v_old ->> TG_ARGV[1]);
  END IF;
  IF TG_OP = 'DELETE' THEN RETURN OLD; END IF;
  RETURN NEW;
END
$fn$;

CREATE OR REPLACE FUNCTION ttsync_capture_flush() RETURNS trigger
LANGUAGE plpgsql SET search_path FROM CURRENT AS $fn$
DECLARE
  v_after jsonb;
  v_action text;
  v_payload jsonb;
  v_version bigint;
  v_event_id uuid := gen_random_uuid();
  v_now timestamptz := clock_timestamp();
BEGIN
  DELETE FROM ttsync_capture_pending
   WHERE txid = NEW.txid AND aggregatetype = NEW.aggregatetype AND aggregateid = NEW.aggregateid;
  v_after := ttsync_snapshot(NEW.aggregatetype, NEW.aggregateid);
  IF v_after IS NULL AND NEW.before_state IS NULL THEN
    RETURN NULL;  -- created and deleted in one transaction: nothing was ever visible
  ELSIF v_after IS NULL THEN
    v_action := 'deleted'; v_payload := NEW.before_state;
  ELSIF NEW.before_state IS NULL THEN
    v_action := 'created'; v_payload := v_after;
  ELSIF v_after = NEW.before_state THEN
    RETURN NULL;  -- touched but unchanged
  ELSE
    v_action := 'updated'; v_payload := v_after;
  END IF;
  INSERT INTO ttsync_aggregate_versions AS v (aggregatetype, aggregateid, version)
  VALUES (NEW.aggregatetype, NEW.aggregateid, 1)
  ON CONFLICT (aggregatetype, aggregateid) DO UPDATE SET version = v.version + 1
  RETURNING v.version INTO v_version;
  INSERT INTO ttsync_outbox (id, aggregatetype, aggregateid, type, payload, aggregate_version, occurred_at,
                             headers, origin)
  VALUES (v_event_id, NEW.aggregatetype, NEW.aggregateid, NEW.aggregatetype || '.' || v_action,
          jsonb_build_object(
            'event_id', v_event_id,
            'event_type', NEW.aggregatetype || '.' || v_action,
            'aggregate_type', NEW.aggregatetype,
            'aggregate_id', NEW.aggregateid,
            'aggregate_version', v_version,
            'occurred_at', to_char(v_now AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
            'schema_version', '%(schema_version)s',
            'source', '%(source)s',
            'payload', v_payload),
          v_version, v_now, jsonb_build_object('txid', NEW.txid::text, 'capture', 'trigger'),
          -- who made the change: the importer sets it for its transaction (set_config(..., true))
          NULLIF(current_setting('ttsync.origin', true), ''));
  PERFORM pg_notify('%(notify_channel)s', NEW.aggregatetype);
  RETURN NULL;
END
$fn$;

DROP TRIGGER IF EXISTS ttsync_capture_flush ON ttsync_capture_pending;
CREATE CONSTRAINT TRIGGER ttsync_capture_flush AFTER INSERT ON ttsync_capture_pending
  DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION ttsync_capture_flush();
