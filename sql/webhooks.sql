--
-- webhooks: receive_webhook verifies Standard Webhooks deliveries
-- (webhook-id, webhook-timestamp, webhook-signature "v1,<base64>"), with
-- several signatures and several secrets for rotation, a ±5 minute
-- tolerance, and deduplication by webhook-id.  Rejections raise 28000 and
-- store nothing.
--
SELECT regress.request(regress.uuid(51));
SELECT qes_sign.apply_signature_request(regress.uuid(51), regress.sr(regress.uuid(51), 'OPEN', '{OPEN,OPEN}'));
DELETE FROM qes_sign.callback_inbox;
CREATE TABLE regress.wcounts AS SELECT name, value FROM qes_sign.counters();

-- regress.wh: headers for a delivery, signed with a secret (pgcrypto, independent of qes_sign)
CREATE FUNCTION regress.wh(id text, ts bigint, body text, secret text DEFAULT 'MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw')
RETURNS jsonb LANGUAGE sql AS $$
    SELECT jsonb_build_object('webhook-id', id, 'webhook-timestamp', ts::text, 'webhook-signature',
        'v1,' || encode(hmac(convert_to(id || '.' || ts || '.' || body, 'UTF8'), decode(secret, 'base64'), 'sha256'), 'base64'))
$$;

-- The official test vector of the Standard Webhooks specification, at its own time
SET qes_sign.test_clock = '2021-02-25 15:02:10+00';   -- = 1614265330
SELECT to_timestamp(1614265330) = qes_sign.clock() AS clock_set;
SELECT request_id, callback_type, duplicate FROM qes_sign.receive_webhook(
    '{"webhook-id": "msg_p5jXN8AQM9LWM0D4loKWxJek", "webhook-timestamp": "1614265330",
      "webhook-signature": "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="}',
    convert_to('{"test": 2432232314}', 'UTF8'));
-- our own signing agrees with the vector
SELECT regress.wh('msg_p5jXN8AQM9LWM0D4loKWxJek', 1614265330, '{"test": 2432232314}') ->> 'webhook-signature' AS signature;
-- delivered again: a replay, recognised by its id, stored once
SELECT duplicate FROM qes_sign.receive_webhook(
    '{"webhook-id": "msg_p5jXN8AQM9LWM0D4loKWxJek", "webhook-timestamp": "1614265330",
      "webhook-signature": "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="}',
    convert_to('{"test": 2432232314}', 'UTF8'));

-- the same bytes spelt differently in base64 (unused low bits set, or '='
-- inside) are not the signature: only the canonical text matches
SELECT regress.try(format($$SELECT qes_sign.receive_webhook(
    '{"webhook-id": "msg_noncanonical_%s", "webhook-timestamp": "1614265330",
      "webhook-signature": "v1,%s"}', convert_to('{"test": 2432232314}', 'UTF8'))$$, n, sig)) AS non_canonical
  FROM (VALUES (1, 'g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OF='),
               (2, 'g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE')) v(n, sig);

-- the tolerance: 5 minutes either way
SET qes_sign.test_clock = '2021-02-25 15:07:10+00';   -- exactly +300 s
SELECT duplicate FROM qes_sign.receive_webhook(regress.wh('msg_edge_late', 1614265330, '{"test": 1}'), convert_to('{"test": 1}', 'UTF8'));
SET qes_sign.test_clock = '2021-02-25 15:07:11+00';   -- +301 s
SELECT regress.try($$SELECT qes_sign.receive_webhook(
    '{"webhook-id": "msg_p5jXN8AQM9LWM0D4loKWxJek", "webhook-timestamp": "1614265330",
      "webhook-signature": "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="}',
    convert_to('{"test": 2432232314}', 'UTF8'))$$) AS official_vector_too_late;
SET qes_sign.test_clock = '2021-02-25 14:57:09+00';   -- the message is from 301 s in the future
SELECT regress.try($$SELECT qes_sign.receive_webhook(regress.wh('msg_early', 1614265330, '{"test": 1}'), convert_to('{"test": 1}', 'UTF8'))$$) AS too_early;
RESET qes_sign.test_clock;

-- at the real time: a gateway relays a Skribble callback (its signed URL)
SELECT extract(epoch FROM now())::bigint AS now \gset
SELECT request_id = regress.uuid(51) AS r51, callback_type, duplicate FROM qes_sign.receive_webhook(
    regress.wh('msg_cb_1', :now, jsonb_build_object('url', qes_sign.callback_url(regress.uuid(51), 'update'))::text),
    convert_to(jsonb_build_object('url', qes_sign.callback_url(regress.uuid(51), 'update'))::text, 'UTF8'));
-- ... or names the Skribble request directly
SELECT request_id = regress.uuid(51) AS r51, callback_type FROM qes_sign.receive_webhook(
    regress.wh('msg_cb_2', :now, '{"type": "SUCCESS", "signature_request_id": "sr-00000000-0000-0000-0000-000000000033"}'),
    convert_to('{"type": "SUCCESS", "signature_request_id": "sr-00000000-0000-0000-0000-000000000033"}', 'UTF8'));
-- rotation: signed with the second configured secret; several signatures
-- in one header, one of them valid; header names in any case
SELECT duplicate FROM qes_sign.receive_webhook(
    regress.wh('msg_rot', :now, '{"test": 3}', 'c2Vjb25kLXNlY3JldC1mb3Itcm90YXRpb24='), convert_to('{"test": 3}', 'UTF8'));
SELECT duplicate FROM qes_sign.receive_webhook(
    jsonb_build_object('Webhook-Id', 'msg_multi', 'WEBHOOK-TIMESTAMP', :'now', 'webhook-signature',
        'v1,AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA= ' || (regress.wh('msg_multi', :now, '{"test": 4}') ->> 'webhook-signature')),
    convert_to('{"test": 4}', 'UTF8'));
SELECT request_id = regress.uuid(51) AS r51, callback_type, source, webhook_id FROM qes_sign.callback_inbox ORDER BY id;

-- Rejected deliveries
CREATE TABLE regress.bad_hooks (label text, headers jsonb, body text);
INSERT INTO regress.bad_hooks VALUES
 ('wrong signature',        jsonb_set(regress.wh('m1', :now, '{"a": 1}'), '{webhook-signature}', '"v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="'), '{"a": 1}'),
 ('body changed',           regress.wh('m2', :now, '{"a": 1}'), '{"a": 2}'),
 ('id changed',             jsonb_set(regress.wh('m3', :now, '{"a": 1}'), '{webhook-id}', '"m3x"'), '{"a": 1}'),
 ('timestamp changed',      jsonb_set(regress.wh('m4', :now, '{"a": 1}'), '{webhook-timestamp}', to_jsonb((:now + 1)::text)), '{"a": 1}'),
 ('unknown secret',         regress.wh('m5', :now, '{"a": 1}', 'dW5rbm93bi1zZWNyZXQ='), '{"a": 1}'),
 ('version v2 only',        jsonb_set(regress.wh('m6', :now, '{"a": 1}'), '{webhook-signature}', to_jsonb(replace(regress.wh('m6', :now, '{"a": 1}') ->> 'webhook-signature', 'v1,', 'v2,'))), '{"a": 1}'),
 ('no signature header',    regress.wh('m7', :now, '{"a": 1}') - 'webhook-signature', '{"a": 1}'),
 ('no id header',           regress.wh('m8', :now, '{"a": 1}') - 'webhook-id', '{"a": 1}'),
 ('timestamp not a number', jsonb_set(regress.wh('m9', :now, '{"a": 1}'), '{webhook-timestamp}', '"yesterday"'), '{"a": 1}'),
 ('headers not an object',  '["webhook-id"]', '{"a": 1}'),
 ('signed body not JSON',   regress.wh('m10', :now, 'not json'), 'not json'),
 ('signed URL forged',      regress.wh('m11', :now, '{"url": "/qes/callback/00000000-0000-0000-0000-000000000033/update/AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"}'),
                            '{"url": "/qes/callback/00000000-0000-0000-0000-000000000033/update/AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"}');
SELECT label, regress.try(format('SELECT qes_sign.receive_webhook(%L, %L)', headers, convert_to(body, 'UTF8'))) AS result
  FROM regress.bad_hooks ORDER BY label;
SELECT regress.try($$SELECT qes_sign.receive_webhook(NULL, NULL)$$) AS nulls;

-- nothing stored by the rejected ones; the counters saw each decision
SELECT count(*) AS inbox_rows FROM qes_sign.callback_inbox;
SELECT c.name, c.value - o.value AS delta FROM qes_sign.counters() c JOIN regress.wcounts o USING (name)
 WHERE c.name LIKE 'webhooks%' ORDER BY 1;
