/*-------------------------------------------------------------------------
 *
 * yousign.c
 *		What must be C of the Yousign API v3 provider: its calls carry the
 *		static API key (no login), and webhook deliveries are verified
 *		against X-Yousign-Signature-256 ("sha256=" and the hex HMAC-SHA256
 *		of the raw body) with each secret of qes_sign.yousign_webhook_secrets,
 *		in constant time.  Everything else (which call, what an answer
 *		means) is SQL: sql/install/provider-yousign.sql.
 *
 *-------------------------------------------------------------------------
 */
#include "qes_sign.h"

#include "http.h"

/* Yousign's secret_key has 32 characters; anything far longer is no key */
#define MAX_SECRET_LEN 512

/*
 * qes_yousign_ready: an API key is configured, so Yousign work is claimed.
 */
bool
qes_yousign_ready(void)
{
	return qes_yousign_api_key[0] != '\0';
}

/*
 * qes_yousign_call is a call to the Yousign API (path below
 * qes_sign.yousign_url) authenticated with the API key.
 */
QesCall *
qes_yousign_call(MemoryContext parent, const char *kind, const char *method,
				 const char *path)
{
	QesCall    *call = qes_call_new(parent, kind, method, "");
	MemoryContext old = MemoryContextSwitchTo(call->cxt);

	call->url = qes_join_url(qes_yousign_url, path);
	call->service = "yousign";
	call->bearer = pstrdup(qes_yousign_api_key);
	MemoryContextSwitchTo(old);
	return call;
}

/*
 * hex_of writes the lower-case hex of a MAC (2 * QES_SHA256_LEN + 1 bytes).
 */
static void
hex_of(const unsigned char *mac, char *out)
{
	static const char digits[] = "0123456789abcdef";

	for (int i = 0; i < QES_SHA256_LEN; i++)
	{
		out[2 * i] = digits[mac[i] >> 4];
		out[2 * i + 1] = digits[mac[i] & 15];
	}
	out[2 * QES_SHA256_LEN] = '\0';
}

PG_FUNCTION_INFO_V1(qes_sign_verify_yousign);

/*
 * qes_sign_verify_yousign(signature text, body bytea) returns when the
 * header value is "sha256=<hex>" of the body with one configured secret;
 * otherwise it counts the rejection and raises 28000.  Every secret is
 * tried (constant work whichever matches).
 */
Datum
qes_sign_verify_yousign(PG_FUNCTION_ARGS)
{
	char	   *sig;
	bytea	   *body;
	char	   *secrets;
	char	   *tok;
	char	   *saveptr = NULL;
	bool		any_secret = false;
	bool		found = false;

	if (PG_ARGISNULL(0) || PG_ARGISNULL(1))
		qes_reject(QES_WEBHOOKS_REJECTED,
				   errmsg("webhook rejected: header \"X-Yousign-Signature-256\" is missing"));
	sig = text_to_cstring(PG_GETARG_TEXT_PP(0));
	body = PG_GETARG_BYTEA_PP(1);
	if (strncmp(sig, "sha256=", 7) != 0 || strlen(sig) != 7 + 2 * QES_SHA256_LEN)
		qes_reject(QES_WEBHOOKS_REJECTED,
				   errmsg("webhook rejected: X-Yousign-Signature-256 is not sha256=<64 hex digits>"));

	for (char *c = sig + 7; *c; c++)
		*c = pg_ascii_tolower((unsigned char) *c);	/* hex in either case */
	secrets = pstrdup(qes_yousign_webhook_secrets);
	for (tok = strtok_r(secrets, ", ", &saveptr); tok;
		 tok = strtok_r(NULL, ", ", &saveptr))
	{
		unsigned char mac[QES_SHA256_LEN];
		char		hex[2 * QES_SHA256_LEN + 1];

		if (strlen(tok) > MAX_SECRET_LEN)
			continue;
		any_secret = true;
		qes_hmac_sha256(tok, strlen(tok), VARDATA_ANY(body), VARSIZE_ANY_EXHDR(body), mac);
		hex_of(mac, hex);
		found |= qes_equal_ct(sig + 7, hex, 2 * QES_SHA256_LEN);
	}
	if (!any_secret)
		qes_reject(QES_WEBHOOKS_REJECTED,
				   errmsg("webhook rejected: qes_sign.yousign_webhook_secrets is empty"));
	if (!found)
		qes_reject(QES_WEBHOOKS_REJECTED,
				   errmsg("webhook rejected: no signature matches"));
	PG_RETURN_VOID();
}
