--
-- apply_state: qes_sign.apply_signature_request applies a SignatureRequest
-- exactly as Skribble's API returns it (shapes recorded from the demo API,
-- see ../shared/reference/skribble-demo-responses): signer statuses, sids,
-- view and sign times, the current document_id and the resulting request
-- transition.  Applying the same state twice changes nothing.
--
SELECT regress.request(regress.uuid(21), 3);
CREATE VIEW regress.state AS
SELECT a.id, a.status, a.provider_id, a.document_id, a.provider_status, a.sent_at, a.first_viewed_at,
       a.completed_at, a.cancel_reason,
       (SELECT string_agg(format('%s %s/%s sid=%s', s.email, s.status, s.provider_status, s.provider_signer_id), E'\n' ORDER BY s.position)
          FROM qes_sign.signers s WHERE s.request_id = a.id AND s.status <> 'replaced') AS signers,
       (SELECT count(*) FROM qes_sign.audit_log l WHERE l.request_id = a.id) AS audit_entries,
       (SELECT string_agg(w.kind, ',' ORDER BY w.id) FROM qes_sign.work_items w WHERE w.request_id = a.id) AS work
  FROM qes_sign.signatur_anfragen a;
SET TimeZone = 'UTC';
\x on

-- 1. created at Skribble: OPEN, nobody looked yet.  signer2 has no Skribble
--    account (account_email is an opaque id), signer3's address comes back
--    in capitals: both are matched by signer_identity_data.email_address.
SELECT qes_sign.apply_signature_request(regress.uuid(21), '{
  "id": "b54821fc-231a-ff71-bc25-390e9b89c1c9", "title": "Mietvertrag Testweg 1",
  "message": "Bitte signieren", "document_id": "20c535e0-4260-f52a-b2ba-a45eb280d9a3",
  "legislation": "EIDAS", "quality": "QES",
  "signing_url": "https://my.skribble.com/view/b54821fc-231a-ff71-bc25-390e9b89c1c9",
  "status_overall": "OPEN", "business": "biz-e989cba7b6537b578963df30566fdbf9",
  "custom": "00000000-0000-0000-0000-000000000015",
  "signatures": [
    {"sid": "53766479-b59c-d21e-3c79-0abca86812a5", "account_email": "signer1@example.org",
     "signer_identity_data": {"first_name": "Vorname1", "last_name": "Nachname1", "email_address": "signer1@example.org"},
     "sequence": -1, "status_code": "OPEN", "notify": true,
     "visual_signature": {"position": {"x": 100.0, "y": 600.0, "width": 160.0, "height": 60.0, "page": "0", "rotation": 0, "invisible": false}}},
    {"sid": "7ca98f98-22bb-7d2d-6f37-89d1473f4fe7", "account_email": "ac7ca7deea004608a7d101cdddf8b060",
     "signer_identity_data": {"first_name": "Vorname2", "last_name": "Nachname2", "email_address": "signer2@example.org"},
     "sequence": -1, "status_code": "OPEN", "notify": true,
     "signing_url": "https://my.skribble.com/view/b54821fc-231a-ff71-bc25-390e9b89c1c9/ac7ca7deea004608a7d101cdddf8b060"},
    {"sid": "2423a5bf-38ed-d872-066c-04cabd6eb464", "account_email": "c387e9d4892149d18fc9bc4ace45269c",
     "signer_identity_data": {"first_name": "Vorname3", "last_name": "Nachname3", "email_address": "SIGNER3@example.org"},
     "sequence": -1, "status_code": "OPEN", "notify": false}],
  "cc_email_addresses": [], "attachments": [], "owner": "api_demo_qes_sign",
  "read_access": ["api_demo_qes_sign"], "write_access": ["api_demo_qes_sign"],
  "created_at": "2026-03-19T09:15:00.395Z", "updated_at": "2026-03-19T09:15:00.395Z",
  "expiration_date": "2026-04-18"}') AS status;
SELECT * FROM regress.state WHERE id = regress.uuid(21);

-- 2. the same state again: no change, no new audit entry
SELECT qes_sign.apply_signature_request(regress.uuid(21), regress.sr(regress.uuid(21), 'OPEN', '{OPEN,OPEN,OPEN}')
    || '{"id": "b54821fc-231a-ff71-bc25-390e9b89c1c9", "document_id": "20c535e0-4260-f52a-b2ba-a45eb280d9a3"}') AS status;
SELECT audit_entries FROM regress.state WHERE id = regress.uuid(21);

-- 3. signer2 (no account) opened the signing page: offen → in_signatur
SELECT qes_sign.apply_signature_request(regress.uuid(21), '{
  "id": "b54821fc-231a-ff71-bc25-390e9b89c1c9", "document_id": "20c535e0-4260-f52a-b2ba-a45eb280d9a3",
  "status_overall": "OPEN", "custom": "00000000-0000-0000-0000-000000000015",
  "signatures": [
    {"sid": "53766479-b59c-d21e-3c79-0abca86812a5", "account_email": "signer1@example.org",
     "signer_identity_data": {"email_address": "signer1@example.org"}, "status_code": "OPEN"},
    {"sid": "7ca98f98-22bb-7d2d-6f37-89d1473f4fe7", "account_email": "ac7ca7deea004608a7d101cdddf8b060",
     "signer_identity_data": {"email_address": "signer2@example.org"}, "status_code": "OPEN",
     "last_viewed_at": "2026-03-19T09:21:07.112Z"},
    {"sid": "2423a5bf-38ed-d872-066c-04cabd6eb464", "account_email": "c387e9d4892149d18fc9bc4ace45269c",
     "signer_identity_data": {"email_address": "signer3@example.org"}, "status_code": "OPEN"}]}') AS status;
SELECT status, first_viewed_at, signers FROM regress.state WHERE id = regress.uuid(21);

-- 4. signer1 signed: Skribble made a new current document
SELECT qes_sign.apply_signature_request(regress.uuid(21), '{
  "id": "b54821fc-231a-ff71-bc25-390e9b89c1c9", "document_id": "6a41f7b8-53df-a809-9549-eeddb8f85bf6",
  "status_overall": "OPEN",
  "signatures": [
    {"sid": "53766479-b59c-d21e-3c79-0abca86812a5", "account_email": "signer1@example.org",
     "signer_identity_data": {"email_address": "signer1@example.org"}, "status_code": "SIGNED",
     "last_viewed_at": "2026-03-19T09:30:00.000Z", "signed_at": "2026-03-19T09:34:12.500Z",
     "signed_quality": "QES", "signed_legislation": "EIDAS"},
    {"sid": "7ca98f98-22bb-7d2d-6f37-89d1473f4fe7", "account_email": "ac7ca7deea004608a7d101cdddf8b060",
     "signer_identity_data": {"email_address": "signer2@example.org"}, "status_code": "OPEN",
     "last_viewed_at": "2026-03-19T09:21:07.112Z"},
    {"sid": "2423a5bf-38ed-d872-066c-04cabd6eb464", "account_email": "c387e9d4892149d18fc9bc4ace45269c",
     "signer_identity_data": {"email_address": "signer3@example.org"}, "status_code": "OPEN"}]}') AS status;
SELECT status, document_id, signers FROM regress.state WHERE id = regress.uuid(21);

-- 5. everybody signed, status_overall SIGNED, another new document:
--    vollstaendig at the last signature, and an archive work item
SELECT qes_sign.apply_signature_request(regress.uuid(21), '{
  "id": "b54821fc-231a-ff71-bc25-390e9b89c1c9", "document_id": "1e4e0634-29e7-0f3a-18b8-ea2d869b2e0e",
  "status_overall": "SIGNED",
  "signatures": [
    {"sid": "53766479-b59c-d21e-3c79-0abca86812a5", "account_email": "signer1@example.org",
     "signer_identity_data": {"email_address": "signer1@example.org"}, "status_code": "SIGNED",
     "signed_at": "2026-03-19T09:34:12.500Z", "signed_quality": "QES"},
    {"sid": "7ca98f98-22bb-7d2d-6f37-89d1473f4fe7", "account_email": "ac7ca7deea004608a7d101cdddf8b060",
     "signer_identity_data": {"email_address": "signer2@example.org"}, "status_code": "SIGNED",
     "signed_at": "2026-03-19T09:48:30.000Z", "signed_quality": "QES"},
    {"sid": "2423a5bf-38ed-d872-066c-04cabd6eb464", "account_email": "c387e9d4892149d18fc9bc4ace45269c",
     "signer_identity_data": {"email_address": "signer3@example.org"}, "status_code": "SIGNED",
     "signed_at": "2026-03-19T09:52:45.000Z", "signed_quality": "QES"}]}') AS status \gset
SELECT :'status' AS status;
SELECT status, document_id, completed_at, signers, work FROM regress.state WHERE id = regress.uuid(21);
-- applying it again: nothing changes, still one archive item
SELECT audit_entries FROM regress.state WHERE id = regress.uuid(21) \gset before_
SELECT qes_sign.apply_signature_request(regress.uuid(21), regress.sr(regress.uuid(21), 'SIGNED', '{SIGNED,SIGNED,SIGNED}')
    || '{"id": "b54821fc-231a-ff71-bc25-390e9b89c1c9", "document_id": "1e4e0634-29e7-0f3a-18b8-ea2d869b2e0e"}') AS status;
SELECT audit_entries - :before_audit_entries AS new_entries, work FROM regress.state WHERE id = regress.uuid(21);
\x off

-- the whole story, as the audit trail tells it
SELECT event, detail FROM qes_sign.timeline(regress.uuid(21));
SELECT signers_signed, signers_total, processing_time FROM qes_sign.overview WHERE id = regress.uuid(21);

-- 6. declined: abgebrochen, with who declined and why
SELECT regress.request(regress.uuid(22));
SELECT qes_sign.apply_signature_request(regress.uuid(22), '{"id": "sr-22", "document_id": "d-22",
  "status_overall": "DECLINED", "signatures": [
   {"sid": "s-22-1", "signer_identity_data": {"email_address": "signer1@example.org"}, "status_code": "DECLINED",
    "decline_message": "Die Miete ist zu hoch."},
   {"sid": "s-22-2", "signer_identity_data": {"email_address": "signer2@example.org"}, "status_code": "OPEN"}]}');
SELECT status, cancel_reason, signers FROM regress.state WHERE id = regress.uuid(22);

-- 7. withdrawn at Skribble (after qes_sign.withdraw): abgebrochen
SELECT regress.request(regress.uuid(23));
SELECT qes_sign.withdraw(regress.uuid(23), 'Mieter ist abgesprungen');
SELECT qes_sign.apply_signature_request(regress.uuid(23), '{"id": "sr-23", "document_id": "d-23",
  "status_overall": "WITHDRAWN", "signatures": [
   {"sid": "s-23-1", "signer_identity_data": {"email_address": "signer1@example.org"}, "status_code": "WITHDRAWN"},
   {"sid": "s-23-2", "signer_identity_data": {"email_address": "signer2@example.org"}, "status_code": "WITHDRAWN"}]}');
SELECT status, cancel_reason, signers FROM regress.state WHERE id = regress.uuid(23);
-- a final request ignores later news
SELECT qes_sign.apply_signature_request(regress.uuid(23), '{"id": "sr-23", "document_id": "d-23b",
  "status_overall": "SIGNED", "signatures": [
   {"sid": "s-23-1", "signer_identity_data": {"email_address": "signer1@example.org"}, "status_code": "SIGNED"}]}');
SELECT status, document_id FROM regress.state WHERE id = regress.uuid(23);

-- 8. expired and error at Skribble
SELECT regress.request(regress.uuid(24));
SELECT qes_sign.apply_signature_request(regress.uuid(24), '{"id": "sr-24", "status_overall": "EXPIRED", "signatures": []}');
SELECT regress.request(regress.uuid(25));
SELECT qes_sign.apply_signature_request(regress.uuid(25), '{"id": "sr-25", "status_overall": "ERROR", "signatures": [
   {"sid": "s-25-1", "signer_identity_data": {"email_address": "signer1@example.org"}, "status_code": "ERROR"}]}');
SELECT id = regress.uuid(24) AS r24, status, cancel_reason FROM regress.state WHERE id IN (regress.uuid(24), regress.uuid(25)) ORDER BY id;

-- 9. values this version does not know are recorded, not fatal
SELECT regress.request(regress.uuid(26));
SELECT qes_sign.apply_signature_request(regress.uuid(26), '{"id": "sr-26", "status_overall": "ARCHIVING", "signatures": [
   {"sid": "s-26-1", "signer_identity_data": {"email_address": "signer1@example.org"}, "status_code": "IDENTIFYING"},
   {"sid": "s-26-2", "signer_identity_data": {"email_address": "signer2@example.org"}, "status_code": "OPEN"}]}');
SELECT status, provider_status, signers FROM regress.state WHERE id = regress.uuid(26);
SELECT event, detail FROM qes_sign.timeline(regress.uuid(26)) WHERE event LIKE 'unknown%';

-- 10. ordered signing: later signers wait
SELECT qes_sign.create_request('hv-eppendorf', 'Geordnet', regress.pdf(),
    '[{"first_name": "A", "last_name": "Eins", "email": "signer1@example.org", "sequence": 1},
      {"first_name": "B", "last_name": "Zwei", "email": "signer2@example.org", "sequence": 2}]',
    ordered => true, id => regress.uuid(27));
SELECT qes_sign.apply_signature_request(regress.uuid(27), '{"id": "sr-27", "status_overall": "OPEN", "signatures": [
   {"sid": "s-27-1", "signer_identity_data": {"email_address": "signer1@example.org"}, "sequence": 1, "status_code": "OPEN"},
   {"sid": "s-27-2", "signer_identity_data": {"email_address": "signer2@example.org"}, "sequence": 2, "status_code": "WAITING"}]}');
SELECT status, signers FROM regress.state WHERE id = regress.uuid(27);

-- 11. states that do not fit are refused and change nothing
SELECT regress.try($$SELECT qes_sign.apply_signature_request(regress.uuid(21), '{"id": "another", "signatures": []}')$$);
SELECT regress.try($$SELECT qes_sign.apply_signature_request(regress.uuid(22), '{"id": "sr-22", "custom": "someone-else", "signatures": []}')$$);
SELECT regress.try($$SELECT qes_sign.apply_signature_request(regress.uuid(26), '[]')$$);
SELECT regress.try($$SELECT qes_sign.apply_signature_request(regress.uuid(26), '{"id": "sr-26", "signatures": {}}')$$);
SELECT regress.try($$SELECT qes_sign.apply_signature_request(regress.uuid(26), '{"id": "sr-26", "signatures": [{"sid": "s-26-1", "status_code": "SIGNED", "signed_at": "gestern"}]}')$$);
SELECT regress.try($$SELECT qes_sign.apply_signature_request(regress.uuid(999), '{"id": "x", "signatures": []}')$$);
SELECT status, provider_status, signers FROM regress.state WHERE id = regress.uuid(26);
RESET TimeZone;
