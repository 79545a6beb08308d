# r06_bad_input.pl: suite 6 of "Proven reliability", the SQL side.  A
# mutation fuzzer in plpgsql (rt.fuzz, seeded: QES_FUZZ_SEED) runs as the
# application role against qes_sign.receive_callback(url, body),
# qes_sign.receive_webhook(headers, body) and qes_sign.create_request(...):
# truncated, oversized and mutated signed URLs (MAC, uuid, type, random
# edits of the signed part, the query), wrong encodings, NUL bytes in
# bytea, replayed webhooks, mutated Standard Webhooks signatures,
# timestamps and ids, JSON of the wrong shape, giant signer lists,
# malformed PDFs.  Every input carries its expected outcome (an oracle
# per mutation: only unmodified valid inputs and documented-benign
# variants -- another host, path only, a changed query, a body -- may be
# accepted).  Asserts: outcome = expectation for every input; every
# rejection has the family's SQLSTATE (28000 for callbacks and webhooks;
# 22xxx, 23505, 54000, or 42501 for another tenant, for create_request);
# no state change beyond the accepted ones (row counts and contents of
# every qes_sign table; pre-existing requests byte-identical); audit chain
# ok; the server never crashed.
# Scale: QES_SCALE=full 10,000 inputs, otherwise 1,000.
use strict;
use warnings;
use Time::HiRes qw(time);
use PostgreSQL::Test::Cluster;
use FindBin;
use lib "$FindBin::RealBin/../perl", $FindBin::RealBin;
use Reliability;
use PostgreSQL::Test::Utils;
use Test::More;

my $t0 = time;
my $n = scaled(10_000, 1_000);
my $seed = $ENV{QES_FUZZ_SEED} // $ENV{QES_SEED} // 0.4242;    # any number; inputs are recorded either way
my $node = fixture_node('r06');

# rt (fixture_node loaded the shared fixtures): this script's own
$node->safe_psql('postgres', <<'SQL');
CREATE EXTENSION qes_sign;
CREATE EXTENSION pgcrypto;
GRANT USAGE ON SCHEMA rt TO PUBLIC;
CREATE FUNCTION rt.signers(n int, tag text DEFAULT '') RETURNS jsonb LANGUAGE sql AS $$
    SELECT jsonb_agg(jsonb_build_object('first_name', 'V' || i, 'last_name', 'N' || i,
                     'email', 'signer' || i || tag || '@example.org') ORDER BY i) FROM generate_series(1, n) i $$;
-- requests of two tenants in offen, in_signatur, vollstaendig, abgebrochen
CREATE TABLE rt.reqs AS
SELECT qes_sign.create_request('hv-' || t, 'Mietvertrag ' || s, rt.pdf(), rt.signers(2)) AS id, t, s
  FROM generate_series(1, 2) t, generate_series(1, 4) s;
SELECT qes_sign.apply_signature_request(id, CASE s WHEN 2 THEN rt.sr(id, 'OPEN', '{OPEN,OPEN}', '{1}')
                                                   WHEN 3 THEN rt.sr(id, 'SIGNED', '{SIGNED,SIGNED}')
                                                   ELSE rt.sr(id, 'DECLINED', '{DECLINED,OPEN}') END)
  FROM rt.reqs WHERE s > 1;
-- the signed URLs (computed by the superuser: the app cannot), and URLs
-- correctly signed for ids no request has
CREATE TABLE rt.urls AS
SELECT r.id, ty AS type, qes_sign.callback_url(r.id, ty) AS url, true AS known FROM rt.reqs r, unnest('{success,update,error}'::text[]) ty
UNION ALL
SELECT u, ty, qes_sign.callback_url(u, ty), false FROM (SELECT gen_random_uuid() u FROM generate_series(1, 3)) x, unnest('{success,update,error}'::text[]) ty;
CREATE TABLE rt.results (i int, family text, mutation text, expect text, outcome text,
                         sqlstate text, message text, signers int, input text);
GRANT SELECT ON rt.urls, rt.reqs TO PUBLIC;
GRANT INSERT, SELECT ON rt.results TO PUBLIC;

-- fingerprint of every qes_sign table (superuser, no RLS)
-- the pre-existing requests and their signers, byte for byte
CREATE FUNCTION rt.old_rows() RETURNS text LANGUAGE sql AS $$
    SELECT md5(string_agg(x, E'\n' ORDER BY x)) FROM (
        SELECT a::text x FROM qes_sign.signatur_anfragen a WHERE id IN (SELECT id FROM rt.reqs)
        UNION ALL SELECT s::text FROM qes_sign.signers s WHERE request_id IN (SELECT id FROM rt.reqs)
        UNION ALL SELECT l::text FROM qes_sign.audit_log l WHERE request_id IN (SELECT id FROM rt.reqs)) y $$;
CREATE ROLE r06_app LOGIN IN ROLE qes_sign_app;
SELECT qes_sign.grant_tenant('r06_app', 'hv-1');
CREATE TABLE rt.before AS SELECT * FROM rt.fingerprint();
CREATE TABLE rt.before_old AS SELECT rt.old_rows() AS digest;
CREATE TABLE rt.before_counters AS SELECT * FROM qes_sign.counters();

------------------------------------------------------------------------
-- the fuzzer
CREATE FUNCTION rt.r(k int) RETURNS int LANGUAGE sql AS $$ SELECT floor(random() * k)::int $$;
CREATE FUNCTION rt.pick(a text[]) RETURNS text LANGUAGE sql AS $$ SELECT a[1 + floor(random() * array_length(a, 1))::int] $$;
CREATE FUNCTION rt.junk_char() RETURNS text LANGUAGE sql AS $$
    SELECT rt.pick(ARRAY['A', 'z', '0', '9', '-', '_', '/', '?', '#', '%', '=', '.', ' ', '&', '+', ':',
                         'é', '€', E'\t', '%00', 'ÿ', 'ｆ', U&'\FEFF', U&'\0301', '😀', E'\\', '"', '''']) $$;
-- rt.edit: one random edit (replace, insert, delete) of s
CREATE FUNCTION rt.edit(s text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE p int := 1 + rt.r(greatest(length(s), 1)); op int := rt.r(3);
BEGIN
    CASE op WHEN 0 THEN RETURN overlay(s PLACING rt.junk_char() FROM p FOR 1);
            WHEN 1 THEN RETURN overlay(s PLACING rt.junk_char() FROM p FOR 0);
            ELSE RETURN overlay(s PLACING '' FROM p FOR 1);
    END CASE;
END $$;
-- rt.flip: replace one character of s, in positions lo..hi, by a different one
CREATE FUNCTION rt.flip(s text, lo int, hi int) RETURNS text LANGUAGE plpgsql AS $$
DECLARE p int := lo + rt.r(hi - lo + 1); c text;
BEGIN
    LOOP
        c := CASE WHEN rt.r(2) = 0 THEN substr('ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_', 1 + rt.r(64), 1)
                  ELSE rt.junk_char() END;
        EXIT WHEN c <> substr(s, p, 1);
    END LOOP;
    RETURN overlay(s PLACING c FROM p FOR 1);
END $$;
CREATE FUNCTION rt.norm(s text) RETURNS text LANGUAGE sql AS $$
    SELECT regexp_replace(regexp_replace(s, '/+', '/', 'g'), '/+$', '') $$;
CREATE FUNCTION rt.sign(id text, ts text, body bytea, secret text DEFAULT 'MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw') RETURNS text
LANGUAGE sql AS $$
    SELECT 'v1,' || encode(hmac(convert_to(id || '.' || ts || '.', 'UTF8') || body, decode(secret, 'base64'), 'sha256'), 'base64') $$;
CREATE FUNCTION rt.rbytes(n int) RETURNS bytea LANGUAGE sql AS $$
    SELECT substr(string_agg(gen_random_bytes(1024), ''::bytea), 1, n) FROM generate_series(0, n / 1024) $$;
CREATE FUNCTION rt.now() RETURNS bigint LANGUAGE sql AS $$ SELECT floor(extract(epoch FROM clock_timestamp()))::bigint $$;

-- rt.call: one input, its outcome recorded
CREATE FUNCTION rt.call(i int, family text, mutation text, expect text, sql text, nsigners int DEFAULT NULL)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE st text; msg text; dup boolean; outcome text;
BEGIN
    BEGIN
        IF family = 'create_request' THEN
            EXECUTE sql;
            outcome := 'accepted';
        ELSE
            EXECUTE sql INTO dup;
            outcome := CASE WHEN dup THEN 'duplicate' ELSE 'accepted' END;
        END IF;
    EXCEPTION WHEN OTHERS THEN
        GET STACKED DIAGNOSTICS st = RETURNED_SQLSTATE, msg = MESSAGE_TEXT;
        outcome := 'rejected';
    END;
    INSERT INTO rt.results VALUES (i, family, mutation, expect, outcome, st, msg, nsigners, left(sql, 2000));
END $$;

CREATE FUNCTION rt.q(s text) RETURNS text LANGUAGE sql AS $$ SELECT quote_nullable(s) $$;
CREATE FUNCTION rt.qb(b bytea) RETURNS text LANGUAGE sql AS $$ SELECT quote_nullable(b) || '::bytea' $$;
CREATE FUNCTION rt.qj(j jsonb) RETURNS text LANGUAGE sql AS $$ SELECT quote_nullable(j) || '::jsonb' $$;

CREATE FUNCTION rt.fuzz(first int, last int) RETURNS void LANGUAGE plpgsql AS $fuzz$
DECLARE
    u record; o record;
    base text; path text; query text; pq int; st int; tl int;
    region text; mregion text; prefix text; m int; url text; expect text; label text;
    wid text; ts text; body bytea; sig text; h jsonb; shapes text[];
    doc bytea; signers jsonb; k int;
    ok_url text;
BEGIN
    shapes := ARRAY['{}', '[]', '"str"', '42', 'null', 'true', '{"url": 5}', '{"url": ["x"]}', '{"url": null}',
                    '{"type": "FOO"}', '{"type": "SUCCESS"}', '{"signature_request_id": 7}', '{"a": {"b": [1, {"c": null}]}}',
                    '{"type": "UPDATE", "signature_request_id": "sr-unknown", "document_id": "d", "signature_id": "s"}',
                    '{"url": {"url": "x"}}', '[{"url": "x"}]', '{"test": 2432232314}'];
    FOR i IN first .. last LOOP
        CASE i % 3
        WHEN 0 THEN -----------------------------------------------------------------------------
            SELECT * INTO u FROM rt.urls ORDER BY random() LIMIT 1;
            base := replace(replace(replace(u.url, 'SKRIBBLE_SIGNATURE_REQUEST_ID', md5(random()::text)),
                    'SKRIBBLE_DOCUMENT_ID', md5(random()::text)), 'SKRIBBLE_SIGNATURE_ID', md5(random()::text));
            pq := position('?' IN base);
            path := substr(base, 1, pq - 1); query := substr(base, pq);
            tl := length(u.type);
            st := length(path) - (36 + 1 + tl + 1 + 43) + 1;       -- where the uuid starts
            prefix := substr(path, 1, st - 2);                      -- up to the slash before the uuid
            region := substr(path, st - 1);                         -- /uuid/type/mac
            m := rt.r(15);
            expect := CASE WHEN u.known THEN 'accepted' ELSE 'rejected' END;
            body := NULL;
            CASE m
            WHEN 0 THEN label := 'valid'; url := base;
            WHEN 1 THEN label := 'benign: another host'; url := 'http://10.0.0.' || rt.r(255) || ':8080/x/y' || region || query;
            WHEN 2 THEN label := 'benign: path only'; url := substring(base FROM '^https?://[^/]+(/.*)$');
            WHEN 3 THEN label := 'flip mac'; url := prefix || rt.flip(region, 2 + 36 + 1 + tl + 1, length(region)) || query; expect := 'rejected';
            WHEN 4 THEN label := 'flip uuid'; url := prefix || rt.flip(region, 2, 37) || query; expect := 'rejected';
            WHEN 5 THEN label := 'flip type'; url := prefix || rt.flip(region, 2 + 36 + 1, 2 + 36 + tl) || query; expect := 'rejected';
            WHEN 6 THEN
                label := 'edits of the signed part';
                mregion := region;
                FOR e IN 1 .. 1 + rt.r(4) LOOP mregion := rt.edit(mregion); END LOOP;
                url := prefix || mregion || query;
                IF rt.norm(mregion) <> rt.norm(region) OR strpos(mregion, '?') > 0 OR strpos(mregion, '#') > 0 THEN
                    expect := 'rejected';
                END IF;
            WHEN 7 THEN label := 'truncated'; url := left(path, rt.r(length(path))); expect := 'rejected';
            WHEN 8 THEN
                label := 'benign: edits of the query'; url := query;
                FOR e IN 1 .. 1 + rt.r(6) LOOP url := rt.edit(url); END LOOP;
                url := path || '?' || url;
            WHEN 9 THEN
                IF rt.r(2) = 0 THEN
                    label := 'oversized signed part';
                    url := prefix || overlay(region PLACING repeat(rt.pick('{A,/,%,-,é}'), 1000 + rt.r(200000)) FROM 2 + rt.r(length(region) - 1) FOR 0) || query;
                ELSE
                    label := 'benign: oversized query'; url := base || '&junk=' || repeat('x', 1000 + rt.r(1000000));
                END IF;
            WHEN 10 THEN
                label := 'type swapped, mac kept';
                url := prefix || replace(region, '/' || u.type || '/', '/' || rt.pick(array_remove('{success,update,error}'::text[], u.type)) || '/') || query;
                expect := 'rejected';
            WHEN 11 THEN
                label := 'mac of another request';
                SELECT * INTO o FROM rt.urls WHERE id <> u.id AND type = u.type ORDER BY random() LIMIT 1;
                url := prefix || '/' || u.id || '/' || u.type || '/' || split_part(split_part(o.url, '?', 1), '/', -1) || query;
                expect := 'rejected';
            WHEN 12 THEN
                label := 'benign: binary body with NULs';
                url := base; body := decode(repeat('00', rt.r(10)) || md5(random()::text) || '00ff00', 'hex');
            WHEN 13 THEN
                label := 'wrong encoding of the signed part';
                url := prefix || rt.pick(ARRAY[upper(region), replace(region, '-', '%2D'), replace(region, '/', '%2F'),
                                               translate(region, '0123456789', '０１２３４５６７８９'),
                                               replace(region, '_', '/'), replace(region, '-', '+')]) || query;
                IF rt.norm(substr(url, length(prefix) + 1, length(url) - length(prefix) - length(query))) <> rt.norm(region) THEN
                    expect := 'rejected';
                END IF;
            ELSE
                label := 'empty or no path';
                url := rt.pick(ARRAY['', '/', '//', 'https://', 'https://portal.example', '?a=b', '/' || u.id, '#', '///' || u.type || '/']);
                expect := 'rejected';
            END CASE;
            IF m IN (6, 9, 13) THEN
                -- the oracle: the path, slashes collapsed, still ends in the signed part
                expect := CASE WHEN u.known AND position('#' IN split_part(url, '?', 1)) = 0
                                    AND right(rt.norm(split_part(url, '?', 1)), length(region)) = region
                               THEN 'accepted' ELSE 'rejected' END;
            END IF;
            PERFORM rt.call(i, 'receive_callback', label, expect,
                format('SELECT duplicate FROM qes_sign.receive_callback(%s, %s)', rt.q(url), rt.qb(body)));
        WHEN 1 THEN -----------------------------------------------------------------------------
            wid := 'msg_' || md5(random()::text);
            ts := rt.now()::text;
            SELECT * INTO u FROM rt.urls WHERE known ORDER BY random() LIMIT 1;
            body := convert_to(CASE rt.r(3) WHEN 0 THEN jsonb_build_object('url', u.url)::text
                                            WHEN 1 THEN jsonb_build_object('type', 'SUCCESS', 'signature_request_id', 'sr-' || md5(random()::text))::text
                                            ELSE rt.pick(shapes) END, 'UTF8');
            sig := rt.sign(wid, ts, body);
            expect := 'rejected';
            m := rt.r(16);
            CASE m
            WHEN 0 THEN label := 'valid (any JSON shape)'; expect := 'accepted';
            WHEN 1 THEN
                label := 'replay (same webhook-id)';
                PERFORM rt.call(i, 'receive_webhook', 'replay: first delivery', 'accepted',
                    format('SELECT duplicate FROM qes_sign.receive_webhook(%s, %s)',
                           rt.qj(jsonb_build_object('webhook-id', wid, 'webhook-timestamp', ts, 'webhook-signature', sig)), rt.qb(body)));
                expect := 'duplicate';
            WHEN 2 THEN
                label := 'replay (same id, other body, signed)';
                PERFORM rt.call(i, 'receive_webhook', 'replay: first delivery', 'accepted',
                    format('SELECT duplicate FROM qes_sign.receive_webhook(%s, %s)',
                           rt.qj(jsonb_build_object('webhook-id', wid, 'webhook-timestamp', ts, 'webhook-signature', sig)), rt.qb(body)));
                body := convert_to(rt.pick(shapes), 'UTF8'); sig := rt.sign(wid, ts, body);
                expect := 'duplicate';
            WHEN 3 THEN
                label := 'flip signature';
                ok_url := sig; sig := rt.flip(sig, 4, 4 + 41);   -- the first 42 base64 characters carry 252 bits
                IF translate(sig, '=', 'A') = translate(ok_url, '=', 'A') THEN
                    -- "=" for an "A": OpenSSL's EVP_DecodeBlock reads it as 0 bits, the same
                    -- MAC; asserted on its own below, not counted here
                    label := 'non-canonical: "=" for "A"'; expect := 'observed';
                END IF;
            WHEN 4 THEN
                label := 'body changed after signing';
                body := overlay(body PLACING decode(lpad(to_hex(rt.r(256)), 2, '0'), 'hex') FROM 1 + rt.r(length(body)) FOR rt.r(2));
                IF rt.sign(wid, ts, body) = sig THEN expect := 'accepted'; END IF;
            WHEN 5 THEN label := 'timestamp changed after signing';
                ts := rt.pick(ARRAY[(ts::bigint + 1)::text, (ts::bigint - 1)::text, '', 'abc', ts || '0', '-' || ts, ' ' || ts,
                                    '0' || ts, ts || '.0', '1e10', repeat('9', 40), ts || E'\n']);
            WHEN 6 THEN
                k := rt.pick('{-100000,-3600,-302,-301,302,303,3600,100000,-290,-60,0,60,290}')::int;
                label := format('signed timestamp %s s away', k);
                ts := (ts::bigint + k)::text; sig := rt.sign(wid, ts, body);
                IF abs(k) <= 290 THEN expect := 'accepted'; END IF;
            WHEN 7 THEN
                label := 'webhook-id changed or invalid';
                IF rt.r(2) = 0 THEN
                    ok_url := wid; wid := rt.edit(wid);
                    IF wid = ok_url THEN expect := 'accepted'; END IF;   -- the edit changed nothing
                ELSE wid := rt.pick(ARRAY['', 'msg.dot', repeat('m', 257)]); sig := rt.sign(wid, ts, body); END IF;
            WHEN 8 THEN label := 'header missing';
            WHEN 9 THEN label := 'headers not an object';
            WHEN 10 THEN label := 'benign: header names in upper case'; expect := 'accepted';
            WHEN 11 THEN
                CASE rt.r(4)
                WHEN 0 THEN label := 'benign: a bad and a good signature'; sig := 'v1,' || encode(gen_random_bytes(32), 'base64') || ' ' || sig; expect := 'accepted';
                WHEN 1 THEN label := 'good signature as v2'; sig := 'v2' || substr(sig, 3);
                WHEN 2 THEN label := 'signature base64url';
                            IF position('+' IN sig) = 0 AND position('/' IN sig) = 0 THEN expect := 'accepted'; END IF;
                            sig := translate(sig, '+/', '-_');
                ELSE label := 'signature without padding'; sig := rtrim(sig, '=');
                END CASE;
            WHEN 12 THEN
                label := 'signed body that is not JSON';
                body := rt.pick(ARRAY['\x00', '\x7b00227572', '\xe9e9', '\xfffe7b7d', '\x7b2275726c223a20225c7530303030227d', '\x']::text[])::bytea
                        || CASE WHEN rt.r(2) = 0 THEN gen_random_bytes(1 + rt.r(64)) || '\x00'::bytea ELSE '\x'::bytea END;
                IF length(body) = 0 THEN body := '\x00'; END IF;
                sig := rt.sign(wid, ts, body);
            WHEN 13 THEN
                label := 'signed body with a forged URL';
                pq := position('?' IN u.url);
                body := convert_to(jsonb_build_object('url', rt.flip(u.url, pq - 43, pq - 1))::text, 'UTF8');
                sig := rt.sign(wid, ts, body);
            WHEN 14 THEN label := 'signed with another secret'; sig := rt.sign(wid, ts, body, encode(gen_random_bytes(24), 'base64'));
            ELSE label := 'oversized signature header'; sig := repeat('v1,' || encode(gen_random_bytes(32), 'base64') || ' ', 1000 + rt.r(20000));
            END CASE;
            h := jsonb_build_object('webhook-id', wid, 'webhook-timestamp', ts, 'webhook-signature', sig);
            IF m = 8 THEN h := h - rt.pick('{webhook-id,webhook-timestamp,webhook-signature}'); END IF;
            IF m = 9 THEN h := rt.pick(ARRAY['[]', '"x"', '42', 'null', jsonb_build_array(h)::text])::jsonb; END IF;
            IF m = 10 THEN h := jsonb_build_object('Webhook-Id', wid, 'WEBHOOK-TIMESTAMP', ts, 'webhook-Signature', sig); END IF;
            PERFORM rt.call(i, 'receive_webhook', label, expect,
                format('SELECT duplicate FROM qes_sign.receive_webhook(%s, %s)', rt.qj(h), rt.qb(body)));
        ELSE -----------------------------------------------------------------------------------
            doc := rt.pdf();
            k := 1 + rt.r(3);
            signers := rt.signers(k, '.' || i);
            label := NULL; expect := '22';
            m := rt.r(18);
            CASE m
            WHEN 0 THEN label := 'valid'; expect := 'accepted';
            WHEN 1 THEN label := 'benign: unicode title'; expect := 'accepted';
            WHEN 2 THEN label := 'PDF truncated'; doc := substr(doc, 1, rt.r(length(doc) - 6));
                        IF length(doc) = 0 THEN expect := '22004'; END IF;
            WHEN 3 THEN label := 'PDF header mutated'; doc := overlay(doc PLACING gen_random_bytes(1) FROM 1 + rt.r(5) FOR 1);
                        IF substr(doc, 1, 5) = '\x255044462d'::bytea THEN expect := 'accepted'; END IF;
            WHEN 4 THEN label := 'random bytes / NULs'; doc := CASE rt.r(2) WHEN 0 THEN gen_random_bytes(1 + rt.r(1024))
                                                                ELSE decode(repeat('00', 1 + rt.r(2048)), 'hex') END;
            WHEN 5 THEN label := 'PDF with %%EOF too early'; doc := doc || rt.rbytes(1025 + rt.r(2000));
                        IF position('\x2525454f46'::bytea IN substr(doc, greatest(1, length(doc) - 1023))) > 0 THEN expect := 'accepted'; END IF;
            WHEN 6 THEN label := 'empty or NULL document'; doc := rt.pick('{"\\x",NULL}')::bytea; expect := '22004';
            WHEN 7 THEN label := 'signers of the wrong shape';
                        signers := rt.pick(ARRAY['{}', '"x"', '42', 'null', '[]', '[[]]', '[null]', '[1]', '["a@b.org"]',
                                                 '[{"email": "a@example.org"}]', '{"0": {"email": "a@example.org"}}',
                                                 '[{"first_name": 1, "last_name": "b", "email": "a@example.org"}]',
                                                 '[{"first_name": "a", "last_name": "b", "email": ["a@example.org"]}]'])::jsonb;
            WHEN 8 THEN label := 'giant signer list'; k := 51 + rt.r(3000); signers := rt.signers(k, '.' || i);
            WHEN 9 THEN label := 'duplicate signer address'; signers := signers || jsonb_build_array(jsonb_set(signers -> 0, '{email}',
                                    to_jsonb(upper(signers -> 0 ->> 'email')))); expect := '23505';
            WHEN 10 THEN
                label := rt.pick('{email,first_name,last_name,language,mobile,sequence,extra}');
                signers := jsonb_set(signers, ARRAY['0', label], (CASE WHEN label IN ('first_name', 'last_name') THEN
                        rt.pick(ARRAY['""', '" "', '1', 'null', '[]', '{}', to_jsonb(repeat('x', 201))::text])
                    WHEN label = 'email' THEN
                        rt.pick(ARRAY['""', '1', 'null', '"a@"', '"@b.org"', '"a..b@example.org"', '"a b@example.org"', '"a@b"',
                                      '"a@-b.org"', to_jsonb(repeat('x', 250) || '@example.org')::text, '"a@b.org\t"'])
                    WHEN label = 'language' THEN rt.pick(ARRAY['"xx"', '"DE"', '1', 'null', '""'])
                    WHEN label = 'mobile' THEN rt.pick(ARRAY['"+1"', '1', '"abc"', '"+49 151 1234567890123456789"', 'null'])
                    WHEN label = 'sequence' THEN rt.pick(ARRAY['0', '51', '1.5', '"1"', '-1', 'null', '1e2'])
                    ELSE rt.pick(ARRAY['1', '"x"', 'null']) END)::jsonb, true);
                label := 'signer field mutated: ' || label;
            WHEN 11 THEN label := 'NULL or empty title'; expect := '22004';
            WHEN 12 THEN label := 'oversized title/message'; pq := rt.r(2);
            WHEN 13 THEN label := 'unknown vorgangstyp';
            WHEN 14 THEN label := 'bad lifetime';
            WHEN 15 THEN label := 'id already taken'; expect := '23505';
            WHEN 16 THEN label := 'verwaltung with "/" or control characters';
            ELSE label := 'another tenant'; expect := '42501';
            END CASE;
            PERFORM rt.call(i, 'create_request', label, expect,
                format('SELECT qes_sign.create_request(%s, %s, %s, %s, message => %s, vorgangstyp => %s, ordered => %s, expires_in => %s, id => %s)',
                    rt.q(CASE m WHEN 16 THEN rt.pick(ARRAY['hv-1/x', E'hv-1\n', '..', chr(1), 'hv' || chr(127), '.']) WHEN 17 THEN 'hv-2' ELSE 'hv-1' END),
                    rt.q(CASE m WHEN 1 THEN 'Mietvertrag 😀 ｆ ' || U&'\0301' || ' Straße' WHEN 11 THEN rt.pick('{"", "   ", NULL}')
                                WHEN 12 THEN CASE WHEN pq = 0 THEN repeat('t', 501 + rt.r(100000)) ELSE 'T' END ELSE 'Mietvertrag ' || i END),
                    rt.qb(doc), rt.qj(signers),
                    rt.q(CASE WHEN m = 12 AND pq = 1 THEN repeat('m', 5001 + rt.r(100000)) END),
                    rt.q(CASE m WHEN 13 THEN rt.pick(ARRAY['', 'MIETVERTRAG', 'mietvertrag ', 'x', repeat('y', 1000)]) ELSE 'mietvertrag' END),
                    CASE WHEN m = 7 AND rt.r(4) = 0 THEN 'NULL' ELSE 'false' END,
                    rt.q(CASE m WHEN 14 THEN rt.pick('{0,-1 day,366 days,1000 years,-1 second}') END) || '::interval',
                    rt.q(CASE m WHEN 15 THEN (SELECT id::text FROM rt.reqs WHERE t = 1 ORDER BY random() LIMIT 1) END) || '::uuid'),
                CASE WHEN m = 9 THEN k + 1 ELSE k END);
        END CASE;
    END LOOP;
END
$fuzz$;
GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA rt TO PUBLIC;
SQL

# run the fuzzer as the application, in chunks of 500 (one transaction each)
my $chunk = 500;
my $fuzz_ok = 1;
for (my $first = 1; $first <= $n; $first += $chunk)
{
	my $last = $first + $chunk - 1;
	$last = $n if $last > $n;
	my ($out, $err) = ('', '');
	my $rc = $node->psql('postgres',
		"SET ROLE r06_app; SET qes_sign.verwaltung = 'hv-1'; SELECT setseed(" . sprintf('%.9f', ($seed * 1000 + $first) / ($seed * 1000 + $n + 1)) . "); SELECT rt.fuzz($first, $last);",
		stdout => \$out, stderr => \$err);
	if ($rc != 0) { diag("fuzz chunk $first..$last: rc $rc: $err"); $fuzz_ok = 0; last; }
}
ok($fuzz_ok, "the fuzzer ran all $n inputs without a lost connection");

# the one 40 MB + 1 document (54000), outside the loop to keep it fast
$node->safe_psql('postgres', q{
	SET ROLE r06_app; SET qes_sign.verwaltung = 'hv-1';
	SELECT rt.call(0, 'create_request', 'document over 40 MB', '54000',
	  format('SELECT qes_sign.create_request(%L, %L, %s, %s)', 'hv-1', 'big',
	         'rt.pdf() || decode(repeat(''20'', 41943041), ''hex'')', quote_literal(rt.signers(1)) || '::jsonb'))});

# a webhook whose last signature character differs only in its 2 unused
# bits: the same MAC in a non-canonical base64 (observed, not a forgery)
my $noncanon = $node->safe_psql('postgres', q{
	SET ROLE r06_app;
	SELECT rt.call(-1, 'observation', 'non-canonical base64 of the right MAC', 'observed',
	   format('SELECT duplicate FROM qes_sign.receive_webhook(%s, %s)',
	     rt.qj(jsonb_build_object('webhook-id', 'msg_noncanon', 'webhook-timestamp', rt.now()::text, 'webhook-signature',
	        overlay(s PLACING substr('ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/',
	               1 + ((strpos('ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/', substr(s, 46, 1)) - 1) # 1), 1) FROM 46 FOR 1))),
	     rt.qb(convert_to('{"test": 1}', 'UTF8'))))
	  FROM (SELECT rt.sign('msg_noncanon', rt.now()::text, convert_to('{"test": 1}', 'UTF8')) s) x;
	SELECT outcome FROM rt.results WHERE i = -1});
$noncanon = (split /\n/, $noncanon)[-1];
# and one whose signature has "=" where the right one has an "A"
my $eq_for_a = $node->safe_psql('postgres', q{
	SET ROLE r06_app;
	SELECT rt.call(-2, 'observation', '"=" in place of an "A" in the signature', 'observed',
	   format('SELECT duplicate FROM qes_sign.receive_webhook(%s, %s)',
	     rt.qj(jsonb_build_object('webhook-id', id, 'webhook-timestamp', ts, 'webhook-signature',
	        overlay(s PLACING '=' FROM 3 + position('A' IN substr(s, 4, 42)) FOR 1))),
	     rt.qb(convert_to('{"test": 2}', 'UTF8'))))
	  FROM (SELECT id, ts, rt.sign(id, ts, convert_to('{"test": 2}', 'UTF8')) s
	          FROM (SELECT 'msg_eq_for_a_' || g AS id, rt.now()::text AS ts FROM generate_series(1, 200) g) c) x
	 WHERE position('A' IN substr(s, 4, 42)) > 0 LIMIT 1;
	SELECT outcome FROM rt.results WHERE i = -2});
$eq_for_a = (split /\n/, $eq_for_a)[-1];
is($noncanon, 'rejected', 'a webhook signature that is not the canonical base64 of the MAC (unused low bits set) is refused');
is($eq_for_a, 'rejected', 'a webhook signature with "=" in place of an "A" (not base64) is refused');

# results
my $q = sub { $node->safe_psql('postgres', shift) };
my $total = $q->('SELECT count(*) FROM rt.results WHERE i >= 0');
cmp_ok($total, '>=', $n, "at least $n inputs ($total)");
# a verified callback or webhook may read as a duplicate where the oracle
# says accepted: one unprocessed row per request and type, and none for a
# request that has ended (acknowledged, not stored)
my $wrong = $q->(q{
	SELECT count(*) FROM rt.results WHERE i >= 0 AND expect <> 'observed' AND NOT (
	       (expect IN ('accepted', 'duplicate') AND (outcome = expect OR (family <> 'create_request' AND outcome = 'duplicate')))
	    OR (expect NOT IN ('accepted', 'duplicate') AND outcome = 'rejected'))});
my $false_accept = $q->(q{SELECT count(*) FROM rt.results WHERE i >= 0 AND expect NOT IN ('accepted', 'duplicate', 'observed') AND outcome <> 'rejected'});
is($false_accept, '0', 'zero inputs accepted that should have been rejected');
is($wrong, '0', 'every input had its expected outcome');
diag($q->(q{SELECT string_agg(format('#%s %s / %s: expected %s, got %s %s %s -- %s', i, family, mutation, expect, outcome,
             coalesce(sqlstate, ''), coalesce(message, ''), left(input, 300)), E'\n') FROM (
	SELECT * FROM rt.results WHERE i >= 0 AND expect <> 'observed' AND NOT (
	       (expect IN ('accepted', 'duplicate') AND (outcome = expect OR (family <> 'create_request' AND outcome = 'duplicate')))
	    OR (expect NOT IN ('accepted', 'duplicate') AND outcome = 'rejected')) ORDER BY i LIMIT 15) x})) if $wrong;
is($q->(q{SELECT count(*) FROM rt.results WHERE outcome = 'rejected' AND sqlstate IS NULL}), '0',
	'every rejection has a SQLSTATE');
my $bad_state = $q->(q{
	SELECT coalesce(string_agg(DISTINCT family || ' ' || sqlstate || ' ' || left(message, 120), E'\n'), '') FROM rt.results
	 WHERE i >= 0 AND outcome = 'rejected' AND NOT (
	       (family IN ('receive_callback', 'receive_webhook') AND sqlstate = '28000')
	    OR (family = 'create_request' AND (sqlstate LIKE '22%' OR sqlstate IN ('23505', '54000')
	                                       OR (sqlstate = '42501' AND mutation = 'another tenant'))))});
is($bad_state, '', 'rejections carry 28000 (callbacks, webhooks) or 22xxx/23505/54000 (create_request)');
is($q->(q{SELECT count(*) FROM rt.results WHERE family = 'create_request' AND outcome = 'rejected'
	AND expect NOT IN ('22', 'accepted') AND sqlstate <> expect}), '0', 'create_request: the exact SQLSTATE where one is named');
is($q->(q{SELECT outcome || ' ' || coalesce(sqlstate, '') FROM rt.results WHERE i = 0}), 'rejected 54000', 'a 40 MB + 1 document: 54000');

# state: only what the accepted inputs add
my %delta = map { my @f = split /\|/; ($f[0] => $f[1]) } split /\n/, $q->(q{
	SELECT b.tbl, a.n - b.n FROM rt.before b JOIN rt.fingerprint() a USING (tbl)});
my $creates = $q->(q{SELECT count(*) FROM rt.results WHERE family = 'create_request' AND outcome = 'accepted'});
my $signers = $q->(q{SELECT coalesce(sum(signers), 0) FROM rt.results WHERE family = 'create_request' AND outcome = 'accepted'});
my $stored = $q->(q{SELECT count(*) FROM rt.results WHERE family IN ('receive_callback', 'receive_webhook', 'observation') AND outcome = 'accepted'});
is($delta{signatur_anfragen}, $creates, "signatur_anfragen: + the $creates accepted creates");
is($delta{signers}, $signers, "signers: + their $signers signers");
is($delta{work_items}, $creates, 'work_items: + one submit each');
is($delta{audit_log}, $creates, "audit_log: + one 'created' each");
is($delta{callback_inbox}, $stored, "callback_inbox: + the $stored accepted, non-duplicate callbacks and webhooks");
# every verified webhook id is kept for replay protection, also one whose
# delivery stored nothing (a callback of its request was waiting already)
my ($wh_accepted, $wh_duplicate) = split /\|/, $q->(q{SELECT count(*) FILTER (WHERE outcome = 'accepted'),
	count(*) FILTER (WHERE outcome = 'duplicate') FROM rt.results WHERE family = 'receive_webhook'});
ok($delta{webhook_ids} >= $wh_accepted && $delta{webhook_ids} <= $wh_accepted + $wh_duplicate,
	"webhook_ids: + $delta{webhook_ids}, from the $wh_accepted accepted to those and the $wh_duplicate duplicates");
is($q->(q{SELECT coalesce(string_agg(tbl, ','), '') FROM (SELECT * FROM rt.before EXCEPT SELECT * FROM rt.fingerprint()) d
	WHERE tbl NOT IN ('signatur_anfragen', 'signers', 'work_items', 'audit_log', 'audit_head', 'callback_inbox',
	                  'webhook_ids')}), '',
	'every other table unchanged (contents)');
is($q->('SELECT digest = rt.old_rows() FROM rt.before_old'), 't', 'the pre-existing requests, signers and audit entries are unchanged');
is($q->(q{SELECT count(*) FROM qes_sign.signatur_anfragen WHERE id NOT IN (SELECT id FROM rt.reqs) AND status <> 'offen'}), '0',
	'every new request is offen');
is($q->('SELECT ok FROM qes_sign.verify_audit_chain()'), 't', 'audit chain ok');
my $log = PostgreSQL::Test::Utils::slurp_file($node->logfile);
unlike($log, qr/terminated by signal|PANIC|server process .* was terminated/, 'the server never crashed');

my $summary = $q->(q{SELECT string_agg(f, '; ' ORDER BY f) FROM (
	SELECT format('%s: %s in, %s accepted, %s duplicate, %s rejected', family, count(*),
	       count(*) FILTER (WHERE outcome = 'accepted'), count(*) FILTER (WHERE outcome = 'duplicate'),
	       count(*) FILTER (WHERE outcome = 'rejected')) f
	  FROM rt.results WHERE i >= 0 GROUP BY family) x});
my $mutations = $q->(q{SELECT count(DISTINCT family || mutation) FROM rt.results WHERE i >= 0});
my $states = $q->(q{SELECT string_agg(format('%s=%s', sqlstate, c), ',' ORDER BY sqlstate) FROM (
	SELECT sqlstate, count(*) c FROM rt.results WHERE outcome = 'rejected' GROUP BY 1) x});
my $observed = $q->(q{SELECT count(*) || '/' || count(*) FILTER (WHERE outcome <> 'rejected') FROM rt.results WHERE i >= 0 AND expect = 'observed'});
$node->stop;
note(sprintf('COUNTS r06_bad_input: scale=%s seed=%s inputs=%d mutation_kinds=%d false_accepts=%d wrong_outcomes=%d sqlstates=%s '
	  . 'non_canonical_signature=%s eq_for_A=%s observed_in_fuzz=%s elapsed=%.0fs; %s',
	full() ? 'full' : 'reduced', $seed, $total, $mutations, $false_accept, $wrong, $states, $noncanon, $eq_for_a,
	$observed, time - $t0, $summary));
done_testing();
