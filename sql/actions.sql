--
-- actions: remind, withdraw, replace_signer and restart check the request's
-- current state, then queue the work for Skribble; refused calls change
-- nothing.
--
SELECT regress.drive(regress.uuid(11), 'offen');
SELECT regress.drive(regress.uuid(12), 'in_signatur');
SELECT regress.drive(regress.uuid(13), 'vollstaendig');
SELECT regress.drive(regress.uuid(14), 'abgebrochen');
SELECT regress.drive(regress.uuid(15), 'archiviert');

-- remind: while offen or in_signatur; a second reminder before the worker
-- sent the first is merged into it
SELECT qes_sign.remind(regress.uuid(11));
SELECT qes_sign.remind(regress.uuid(11));
SELECT regress.try($$SELECT qes_sign.remind(regress.uuid(13))$$);
SELECT regress.try($$SELECT qes_sign.remind(regress.uuid(14))$$);
SELECT regress.try($$SELECT qes_sign.remind(regress.uuid(999))$$);
SELECT request_id = regress.uuid(11) AS r11, kind, state FROM qes_sign.work_items WHERE kind = 'remind';

-- withdraw: not once vollstaendig, archiviert or abgebrochen; not twice
SELECT qes_sign.withdraw(regress.uuid(12), 'Wohnung anderweitig vermietet');
SELECT regress.try($$SELECT qes_sign.withdraw(regress.uuid(12), 'nochmal')$$);
SELECT regress.try($$SELECT qes_sign.withdraw(regress.uuid(13), 'zu spät')$$);
SELECT regress.try($$SELECT qes_sign.withdraw(regress.uuid(15), 'zu spät')$$);
SELECT regress.try($$SELECT qes_sign.withdraw(regress.uuid(11), repeat('x', 2049))$$);
SELECT kind, payload FROM qes_sign.work_items WHERE request_id = regress.uuid(12) AND kind = 'withdraw';
-- the status changes only when Skribble confirms (apply_state.sql)
SELECT status FROM qes_sign.signatur_anfragen WHERE id = regress.uuid(12);

-- replace_signer: a wrong address is replaced before that signer signed
SELECT qes_sign.replace_signer(regress.uuid(11), 'SIGNER2@example.org',
    '{"first_name": "Vorname2", "last_name": "Nachname2", "email": "signer2@example.net"}');
SELECT position, email, status, replaced_by IS NOT NULL AS replaced
  FROM qes_sign.signers WHERE request_id = regress.uuid(11) ORDER BY id;
SELECT kind, payload ? 'old_signer' AND payload ? 'new_signer' AS payload_ok
  FROM qes_sign.work_items WHERE request_id = regress.uuid(11) AND kind = 'replace_signer';
SELECT event, detail FROM qes_sign.timeline(regress.uuid(11)) WHERE event = 'signer_replaced';
-- ... but not once anybody signed (Skribble allows signer changes only
-- while nobody has signed), not an unknown one, not into a duplicate, not
-- with a bad address, and not once the request is done
SELECT regress.drive(regress.uuid(16), 'offen');
SELECT qes_sign.apply_signature_request(regress.uuid(16), regress.sr(regress.uuid(16), 'OPEN', '{SIGNED,OPEN}'));
SELECT regress.try($$SELECT qes_sign.replace_signer(regress.uuid(16), 'signer1@example.org',
    '{"first_name": "X", "last_name": "Y", "email": "x@example.org"}')$$);
DO $$                                   -- the hint says what to do instead
DECLARE
    h text;
BEGIN
    PERFORM qes_sign.replace_signer(regress.uuid(16), 'signer2@example.org',
        '{"first_name": "X", "last_name": "Y", "email": "x@example.org"}');
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS h = PG_EXCEPTION_HINT;
    RAISE NOTICE '%: %', SQLSTATE, h;
END
$$;
SELECT regress.drive(regress.uuid(17), 'offen');
SELECT regress.try($$SELECT qes_sign.replace_signer(regress.uuid(17), 'nobody@example.org',
    '{"first_name": "X", "last_name": "Y", "email": "x@example.org"}')$$);
SELECT regress.try($$SELECT qes_sign.replace_signer(regress.uuid(17), 'signer2@example.org',
    '{"first_name": "X", "last_name": "Y", "email": "Signer1@example.org"}')$$);
SELECT regress.try($$SELECT qes_sign.replace_signer(regress.uuid(17), 'signer2@example.org',
    '{"first_name": "X", "last_name": "Y", "email": "x@"}')$$);
SELECT regress.try($$SELECT qes_sign.replace_signer(regress.uuid(17), 'signer2@example.org', '"x@example.org"')$$);
SELECT regress.try($$SELECT qes_sign.replace_signer(regress.uuid(13), 'signer2@example.org',
    '{"first_name": "X", "last_name": "Y", "email": "x@example.org"}')$$);
SELECT email, status FROM qes_sign.signers WHERE request_id = regress.uuid(16) ORDER BY id;

-- restart: only from abgebrochen; a new request with the same document
-- and the current signers, linked to the old one
SELECT regress.try($$SELECT qes_sign.restart(regress.uuid(12))$$);
SELECT qes_sign.restart(regress.uuid(14)) AS new_id \gset
SELECT n.status, n.restarted_from = regress.uuid(14) AS linked, n.document = o.document AS same_document,
       n.title = o.title AS same_title, n.id <> o.id AS new_id
  FROM qes_sign.signatur_anfragen n, qes_sign.signatur_anfragen o
 WHERE n.id = :'new_id' AND o.id = regress.uuid(14);
SELECT email, status FROM qes_sign.signers WHERE request_id = :'new_id' ORDER BY position;
SELECT kind FROM qes_sign.work_items WHERE request_id = :'new_id';
