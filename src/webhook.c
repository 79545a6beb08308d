/*-------------------------------------------------------------------------
 *
 * webhook.c
 *		Verification of Standard Webhooks deliveries (SPEC section 5): the
 *		signed content is "<webhook-id>.<webhook-timestamp>.<body>", each
 *		signature "v1,<base64 HMAC-SHA-256>", keys "whsec_<base64>".  Several
 *		signatures and several secrets allow key rotation.  The SQL wrapper
 *		reads the headers and deduplicates by webhook-id.
 *
 *-------------------------------------------------------------------------
 */
#include "qes_sign.h"

#include "lib/stringinfo.h"

#define MAX_WEBHOOK_ID_LEN 256
#define MAX_SECRET_LEN 512

static bool signature_matches(const char *signatures, const unsigned char *mac);
static bool parse_timestamp(const char *s, int64 *out);

PG_FUNCTION_INFO_V1(qes_sign_verify_webhook);

/*
 * qes_sign_verify_webhook(id text, timestamp text, signatures text,
 * body bytea) returns when one signature verifies with one configured
 * secret and the timestamp is within qes_sign.webhook_tolerance; else it
 * counts the rejection and raises 28000.
 */
Datum
qes_sign_verify_webhook(PG_FUNCTION_ARGS)
{
	char	   *id;
	char	   *ts;
	char	   *sigs;
	bytea	   *body;
	int64		when;
	int64		skew;
	StringInfoData content;
	char	   *secrets;
	char	   *tok;
	char	   *saveptr = NULL;
	bool		any_secret = false;

	static const char *const args[] = {"webhook-id", "webhook-timestamp",
	"webhook-signature", "body"};

	for (int i = 0; i < lengthof(args); i++)
		if (PG_ARGISNULL(i))
			qes_reject(QES_WEBHOOKS_REJECTED,
					   errmsg("webhook rejected: header \"%s\" is missing", args[i]));
	id = text_to_cstring(PG_GETARG_TEXT_PP(0));
	ts = text_to_cstring(PG_GETARG_TEXT_PP(1));
	sigs = text_to_cstring(PG_GETARG_TEXT_PP(2));
	body = PG_GETARG_BYTEA_PP(3);

	if (id[0] == '\0' || strlen(id) > MAX_WEBHOOK_ID_LEN ||
		strchr(id, '.') != NULL)
		qes_reject(QES_WEBHOOKS_REJECTED,
				   errmsg("webhook rejected: invalid webhook-id"));
	if (!parse_timestamp(ts, &when))
		qes_reject(QES_WEBHOOKS_REJECTED,
				   errmsg("webhook rejected: webhook-timestamp is not a Unix time"));
	skew = when - (int64) (qes_now() / USECS_PER_SEC +
						   (POSTGRES_EPOCH_JDATE - UNIX_EPOCH_JDATE) * SECS_PER_DAY);
	if (skew > qes_webhook_tolerance || skew < -qes_webhook_tolerance)
		qes_reject(QES_WEBHOOKS_REJECTED,
				   errmsg("webhook rejected: timestamp outside the tolerance"),
				   errdetail("The timestamp is %lld seconds away from now; %d are allowed.",
							 (long long) skew, qes_webhook_tolerance));

	initStringInfo(&content);
	appendStringInfo(&content, "%s.%s.", id, ts);
	appendBinaryStringInfo(&content, VARDATA_ANY(body), VARSIZE_ANY_EXHDR(body));

	secrets = pstrdup(qes_webhook_secrets);
	for (tok = strtok_r(secrets, ", ", &saveptr); tok;
		 tok = strtok_r(NULL, ", ", &saveptr))
	{
		unsigned char key[MAX_SECRET_LEN];
		unsigned char mac[QES_SHA256_LEN];
		int			keylen;

		if (strncmp(tok, "whsec_", 6) == 0)
			tok += 6;
		keylen = qes_base64_decode(tok, strlen(tok), key, sizeof(key));
		if (keylen <= 0)
			continue;			/* never echo a malformed secret */
		any_secret = true;
		qes_hmac_sha256(key, keylen, content.data, content.len, mac);
		if (signature_matches(sigs, mac))
			PG_RETURN_VOID();
	}
	if (!any_secret)
		qes_reject(QES_WEBHOOKS_REJECTED,
				   errmsg("webhook rejected: no valid secret in qes_sign.webhook_secrets"));
	qes_reject(QES_WEBHOOKS_REJECTED,
			   errmsg("webhook rejected: no signature matches"));
	PG_RETURN_VOID();			/* keep compiler quiet */
}

/*
 * signature_matches looks for "v1,<base64>" among the space-separated
 * signatures that is exactly the canonical base64 of mac (compared as
 * text: a decoder would also take non-canonical spellings of the same
 * bytes).  Other versions are skipped.
 */
static bool
signature_matches(const char *signatures, const unsigned char *mac)
{
	char	   *copy = pstrdup(signatures);
	char	   *saveptr = NULL;
	char	   *expected = qes_base64(mac, QES_SHA256_LEN, false);
	size_t		len = strlen(expected);
	bool		found = false;

	for (char *tok = strtok_r(copy, " ", &saveptr); tok;
		 tok = strtok_r(NULL, " ", &saveptr))
	{
		if (strncmp(tok, "v1,", 3) != 0)
			continue;
		if (strlen(tok + 3) == len && qes_equal_ct(tok + 3, expected, len))
			found = true;		/* keep going: constant work per call */
	}
	pfree(copy);
	return found;
}

/* parse_timestamp reads a decimal Unix time of at most 12 digits */
static bool
parse_timestamp(const char *s, int64 *out)
{
	int64		v = 0;
	int			n = 0;

	for (; *s; s++, n++)
	{
		if (!isdigit((unsigned char) *s) || n >= 12)
			return false;
		v = v * 10 + (*s - '0');
	}
	*out = v;
	return n > 0;
}
