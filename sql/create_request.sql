--
-- create_request: a valid call stores the request (offen), its signers, an
-- audit entry and a submit work item; every bad input is refused with an
-- error naming the field (shown in [brackets]) and nothing is stored.
--
SET qes_sign.verwaltung = 'hv-eppendorf';

-- the article's lease: two tenants and the manager
SELECT qes_sign.create_request('hv-eppendorf', 'Mietvertrag Eppendorfer Weg 12, 2. OG links',
    regress.pdf(10),
    '[{"first_name": "Anna", "last_name": "Becker", "email": "anna.becker@example.org", "language": "de"},
      {"first_name": " Jonas ", "last_name": "Wolf", "email": "Jonas.Wolf@Example.org", "mobile": "+49 151 2345678"},
      {"first_name": "Petra", "last_name": "Verwalterin", "email": "p.verwalterin@hv-eppendorf.example"}]',
    message => 'Bitte bis Freitag signieren.', id => regress.uuid(201)) AS id;

SELECT verwaltung, vorgangstyp, title, message, status, quality, legislation, ordered,
       document_size, document_sha256 = sha256(document) AS digest_ok, created_by,
       expires_at - created_at AS lifetime, sent_at, provider_id
  FROM qes_sign.signatur_anfragen WHERE id = regress.uuid(201);
-- names are trimmed, addresses lower-cased, the caller's order kept
SELECT position, email, first_name, last_name, language, mobile, sequence, status
  FROM qes_sign.signers WHERE request_id = regress.uuid(201) ORDER BY position;
SELECT kind, state, attempts FROM qes_sign.work_items WHERE request_id = regress.uuid(201);
SELECT event, actor, detail - 'document_sha256' AS detail FROM qes_sign.timeline(regress.uuid(201));

-- the same id twice: a retried call cannot create a second request
SELECT regress.try($$SELECT regress.request(regress.uuid(201))$$);

-- ordered signing with sequences, another type, an explicit lifetime
SELECT qes_sign.create_request('hv-eppendorf', 'WEG-Beschluss TOP 3', regress.pdf(),
    '[{"first_name": "A", "last_name": "Eins", "email": "a@example.org", "sequence": 1},
      {"first_name": "B", "last_name": "Zwei", "email": "b@example.org", "sequence": 2}]',
    vorgangstyp => 'weg_beschluss', ordered => true, expires_in => '7 days', id => regress.uuid(202));
SELECT vorgangstyp, ordered, expires_at - created_at AS lifetime FROM qes_sign.signatur_anfragen WHERE id = regress.uuid(202);
SELECT email, sequence FROM qes_sign.signers WHERE request_id = regress.uuid(202) ORDER BY position;

-- Bad input.  Each line is one call; nothing of it may be stored.
CREATE TABLE regress.bad (label text, call text);
INSERT INTO regress.bad VALUES
 ('no tenant',            $$qes_sign.create_request(NULL, 't', regress.pdf(), regress.signers())$$),
 ('blank tenant',         $$qes_sign.create_request(' ', 't', regress.pdf(), regress.signers())$$),
 ('no title',             $$qes_sign.create_request('hv-eppendorf', '', regress.pdf(), regress.signers())$$),
 ('long title',           $$qes_sign.create_request('hv-eppendorf', repeat('x', 501), regress.pdf(), regress.signers())$$),
 ('long message',         $$qes_sign.create_request('hv-eppendorf', 't', regress.pdf(), regress.signers(), message => repeat('x', 5001))$$),
 ('no document',          $$qes_sign.create_request('hv-eppendorf', 't', NULL, regress.signers())$$),
 ('empty document',       $$qes_sign.create_request('hv-eppendorf', 't', '', regress.signers())$$),
 ('not a PDF',            $$qes_sign.create_request('hv-eppendorf', 't', convert_to('<html>%%EOF', 'UTF8'), regress.signers())$$),
 ('PDF without %%EOF',    $$qes_sign.create_request('hv-eppendorf', 't', substring(regress.pdf() FROM 1 FOR 40), regress.signers())$$),
 ('PDF over 40 MB',       $$qes_sign.create_request('hv-eppendorf', 't', '\x255044462d'::bytea || repeat(' ', 41943040)::bytea || '%%EOF'::bytea, regress.signers())$$),
 ('signers not array',    $$qes_sign.create_request('hv-eppendorf', 't', regress.pdf(), '{"email": "a@example.org"}')$$),
 ('no signers',           $$qes_sign.create_request('hv-eppendorf', 't', regress.pdf(), '[]')$$),
 ('51 signers',           $$qes_sign.create_request('hv-eppendorf', 't', regress.pdf(), regress.signers(51))$$),
 ('signer not object',    $$qes_sign.create_request('hv-eppendorf', 't', regress.pdf(), '["a@example.org"]')$$),
 ('no email',             $$qes_sign.create_request('hv-eppendorf', 't', regress.pdf(), '[{"first_name": "A", "last_name": "B"}]')$$),
 ('bad email',            $$qes_sign.create_request('hv-eppendorf', 't', regress.pdf(), '[{"first_name": "A", "last_name": "B", "email": "anna@@example.org"}]')$$),
 ('email without domain', $$qes_sign.create_request('hv-eppendorf', 't', regress.pdf(), '[{"first_name": "A", "last_name": "B", "email": "anna@localhost"}]')$$),
 ('email with space',     $$qes_sign.create_request('hv-eppendorf', 't', regress.pdf(), '[{"first_name": "A", "last_name": "B", "email": "an na@example.org"}]')$$),
 ('email as number',      $$qes_sign.create_request('hv-eppendorf', 't', regress.pdf(), '[{"first_name": "A", "last_name": "B", "email": 42}]')$$),
 ('second signer bad',    $$qes_sign.create_request('hv-eppendorf', 't', regress.pdf(), '[{"first_name": "A", "last_name": "B", "email": "a@example.org"}, {"first_name": "C", "last_name": "D", "email": "c@example..org"}]')$$),
 ('duplicate email',      $$qes_sign.create_request('hv-eppendorf', 't', regress.pdf(), '[{"first_name": "A", "last_name": "B", "email": "a@example.org"}, {"first_name": "C", "last_name": "D", "email": "A@Example.ORG"}]')$$),
 ('empty first name',     $$qes_sign.create_request('hv-eppendorf', 't', regress.pdf(), '[{"first_name": "  ", "last_name": "B", "email": "a@example.org"}]')$$),
 ('no last name',         $$qes_sign.create_request('hv-eppendorf', 't', regress.pdf(), '[{"first_name": "A", "email": "a@example.org"}]')$$),
 ('bad language',         $$qes_sign.create_request('hv-eppendorf', 't', regress.pdf(), '[{"first_name": "A", "last_name": "B", "email": "a@example.org", "language": "es"}]')$$),
 ('bad mobile',           $$qes_sign.create_request('hv-eppendorf', 't', regress.pdf(), '[{"first_name": "A", "last_name": "B", "email": "a@example.org", "mobile": "call me"}]')$$),
 ('unknown field',        $$qes_sign.create_request('hv-eppendorf', 't', regress.pdf(), '[{"first_name": "A", "last_name": "B", "email": "a@example.org", "account_email": "x@example.org"}]')$$),
 ('ordered, no sequence', $$qes_sign.create_request('hv-eppendorf', 't', regress.pdf(), regress.signers(), ordered => true)$$),
 ('sequence zero',        $$qes_sign.create_request('hv-eppendorf', 't', regress.pdf(), '[{"first_name": "A", "last_name": "B", "email": "a@example.org", "sequence": 0}]', ordered => true)$$),
 ('sequence fraction',    $$qes_sign.create_request('hv-eppendorf', 't', regress.pdf(), '[{"first_name": "A", "last_name": "B", "email": "a@example.org", "sequence": 1.5}]', ordered => true)$$),
 ('sequence as text',     $$qes_sign.create_request('hv-eppendorf', 't', regress.pdf(), '[{"first_name": "A", "last_name": "B", "email": "a@example.org", "sequence": "1"}]', ordered => true)$$),
 ('unknown vorgangstyp',  $$qes_sign.create_request('hv-eppendorf', 't', regress.pdf(), regress.signers(), vorgangstyp => 'kaufvertrag')$$),
 ('ordered is NULL',      $$qes_sign.create_request('hv-eppendorf', 't', regress.pdf(), regress.signers(), ordered => NULL)$$),
 ('negative lifetime',    $$qes_sign.create_request('hv-eppendorf', 't', regress.pdf(), regress.signers(), expires_in => '-1 day')$$),
 ('lifetime over a year', $$qes_sign.create_request('hv-eppendorf', 't', regress.pdf(), regress.signers(), expires_in => '400 days')$$);

-- superusers act for every tenant; the tenant check is shown with the app role in security.sql
SELECT label, regress.try('SELECT ' || call) AS result FROM regress.bad ORDER BY label;

-- nothing of the refused calls was stored
SELECT count(*) AS requests FROM qes_sign.signatur_anfragen WHERE title = 't';
SELECT count(*) AS signers FROM qes_sign.signers s JOIN qes_sign.signatur_anfragen a ON a.id = s.request_id WHERE a.title = 't';

-- a new request is announced at commit (the isolation spec notifications
-- shows the payload); the work item wakes the worker at commit
SELECT count(*) AS submit_items FROM qes_sign.work_items WHERE kind = 'submit' AND request_id IN (regress.uuid(201), regress.uuid(202));
