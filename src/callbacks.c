/*-------------------------------------------------------------------------
 *
 * callbacks.c
 *		Signed callback URLs (SPEC section 5).  Skribble sends no signature
 *		with its callbacks, so the URLs handed to it carry one:
 *
 *		<base>/<request uuid>/<type>/<mac>?signature_request=...&document=...
 *
 *		where mac = base64url(HMAC-SHA-256(secret, "qes_sign-callback-v1:"
 *		<uuid> ":" <type>)).  Verification ignores scheme, host and the path
 *		before the last three segments, since proxies rewrite those.
 *
 *-------------------------------------------------------------------------
 */
#include "qes_sign.h"

#include "access/htup_details.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "funcapi.h"
#include "utils/uuid.h"

#define MAC_B64_LEN 43			/* unpadded base64url of 32 bytes */
#define UUID_TEXT_LEN 36
#define MAX_ID_LEN 128
#define ID_CHARS "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ-_"

static const char *const callback_types[] = {"success", "update", "error"};

/* query parameters of a callback URL and Skribble's placeholders for them */
static const struct
{
	const char *param;
	const char *placeholder;
}			callback_params[] = {
	{"signature_request", "SKRIBBLE_SIGNATURE_REQUEST_ID"},
	{"document", "SKRIBBLE_DOCUMENT_ID"},
	{"signature", "SKRIBBLE_SIGNATURE_ID"},
};

static char *callback_mac(const char *uuid, const char *type, int typelen);
static bool valid_type(const char *type, int len);
static bool uuid_shaped(const char *s, int len);
static void parse_query(const char *query, Datum *values, bool *nulls);

PG_FUNCTION_INFO_V1(qes_sign_callback_url);
PG_FUNCTION_INFO_V1(qes_sign_verify_callback);
PG_FUNCTION_INFO_V1(qes_sign_receive_callback);

/*
 * qes_sign_callback_url(id uuid, type text) returns the signed callback
 * URL of one type, with Skribble's placeholders in its query.
 */
Datum
qes_sign_callback_url(PG_FUNCTION_ARGS)
{
	char	   *uuid = DatumGetCString(DirectFunctionCall1(uuid_out, PG_GETARG_DATUM(0)));
	char	   *type = text_to_cstring(PG_GETARG_TEXT_PP(1));
	StringInfoData buf;
	int			baselen;

	if (!valid_type(type, strlen(type)))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid callback type \"%s\"", type),
				 errhint("Use success, update or error.")));
	if (qes_callback_base_url[0] == '\0' || qes_callback_secret[0] == '\0')
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("callback URLs are not configured"),
				 errhint("Set qes_sign.callback_base_url and qes_sign.callback_secret, then reload.")));

	baselen = strlen(qes_callback_base_url);
	while (baselen > 0 && qes_callback_base_url[baselen - 1] == '/')
		baselen--;
	initStringInfo(&buf);
	appendBinaryStringInfo(&buf, qes_callback_base_url, baselen);
	appendStringInfo(&buf, "/%s/%s/%s", uuid, type,
					 callback_mac(uuid, type, strlen(type)));
	for (int i = 0; i < lengthof(callback_params); i++)
		appendStringInfo(&buf, "%c%s=%s", i == 0 ? '?' : '&',
						 callback_params[i].param, callback_params[i].placeholder);
	PG_RETURN_TEXT_P(cstring_to_text(buf.data));
}

/*
 * qes_sign_verify_callback(url text) checks a callback URL as received by
 * the portal (full URL, or path and query) and returns its request id,
 * type and the Skribble ids in its query.  Anything that does not verify
 * is counted and rejected with SQLSTATE 28000; the message never says
 * which MAC would have been right.
 */
/*
 * verify_url checks a callback URL and fills values/nulls with (request_id,
 * callback_type, signature_request_id, document_id, signature_id); any
 * failure is rejected with 28000 and counted.
 */
static void
verify_url(text *url_text, Datum *values, bool *nulls)
{
	char	   *url;
	char	   *path;
	char	   *query;
	char	   *seg[3];
	int			seglen[3];
	char	   *end;

	if (url_text == NULL || VARSIZE_ANY_EXHDR(url_text) == 0)
		qes_reject(QES_CALLBACKS_REJECTED, errmsg("callback URL is empty"));
	if (qes_callback_secret[0] == '\0')
		qes_reject(QES_CALLBACKS_REJECTED,
				   errmsg("callback rejected: qes_sign.callback_secret is not set"));

	url = text_to_cstring(url_text);
	path = strstr(url, "://");
	path = path ? strchr(path + 3, '/') : url;
	if (path == NULL)
		qes_reject(QES_CALLBACKS_REJECTED,
				   errmsg("callback URL has no path"));
	query = strchr(path, '?');
	if (query)
		*query++ = '\0';
	if ((end = strchr(query ? query : path, '#')) != NULL)
		*end = '\0';

	/* the last three path segments: uuid, type, mac */
	end = path + strlen(path);
	while (end > path && end[-1] == '/')
		end--;
	for (int i = 2; i >= 0; i--)
	{
		char	   *start = end;

		while (start > path && start[-1] != '/')
			start--;
		if (start == end)
			qes_reject(QES_CALLBACKS_REJECTED,
					   errmsg("callback URL is truncated"),
					   errdetail("A callback path ends in /<request id>/<type>/<signature>."));
		seg[i] = start;
		seglen[i] = end - start;
		end = start;
		while (end > path && end[-1] == '/')
			end--;
	}

	if (!uuid_shaped(seg[0], seglen[0]))
		qes_reject(QES_CALLBACKS_REJECTED,
				   errmsg("callback URL does not name a request id"));
	seg[0][seglen[0]] = '\0';
	if (!valid_type(seg[1], seglen[1]))
		qes_reject(QES_CALLBACKS_REJECTED,
				   errmsg("callback URL has an unknown callback type"));
	if (seglen[2] != MAC_B64_LEN ||
		!qes_equal_ct(seg[2], callback_mac(seg[0], seg[1], seglen[1]),
					  MAC_B64_LEN))
		qes_reject(QES_CALLBACKS_REJECTED,
				   errmsg("callback signature does not match"),
				   errdetail("The URL was not signed by this qes_sign for this request and type."));

	memset(nulls, 0, 5 * sizeof(bool));
	values[0] = DirectFunctionCall1(uuid_in, CStringGetDatum(seg[0]));
	values[1] = PointerGetDatum(cstring_to_text_with_len(seg[1], seglen[1]));
	parse_query(query, values + 2, nulls + 2);
}

Datum
qes_sign_verify_callback(PG_FUNCTION_ARGS)
{
	TupleDesc	tupdesc;
	Datum		values[5];
	bool		nulls[5];

	verify_url(PG_ARGISNULL(0) ? NULL : PG_GETARG_TEXT_PP(0), values, nulls);
	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "qes_sign_verify_callback must return a composite type");
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(BlessTupleDesc(tupdesc),
													  values, nulls)));
}

/*
 * dedupe_key makes callbacks of one request and type count once while the
 * worker has not looked at them.  The query values are unsigned hints, so
 * they are no part of it: a leaked URL cannot fill the inbox.
 */
static Datum
dedupe_key(Datum *values)
{
	return CStringGetTextDatum(psprintf("%s/%s",
										DatumGetCString(DirectFunctionCall1(uuid_out, values[0])),
										TextDatumGetCString(values[1])));
}

/*
 * store_callback inserts a verified callback once (the inbox's unique
 * dedupe_key) if its request is still open at Skribble; false if it was
 * there already or the request has ended (acknowledged, nothing to fetch).
 * The statements name every object and operator with its schema: this runs
 * as the extension's owner with the caller's search_path.
 */
static bool
store_callback(Datum *values, bool *nulls, Datum body, bool body_null)
{
	static SPIPlanPtr insert_plan = NULL;
	static SPIPlanPtr exists_plan = NULL;
	Oid			types[7] = {UUIDOID, TEXTOID, TEXTOID, TEXTOID, TEXTOID, TEXTOID, BYTEAOID};
	Datum		args[7];
	char		argnulls[7];
	bool		stored;

	for (int i = 0; i < 5; i++)
	{
		args[i] = values[i];
		argnulls[i] = nulls[i] ? 'n' : ' ';
	}
	args[5] = dedupe_key(values);
	argnulls[5] = ' ';
	args[6] = body;
	argnulls[6] = body_null ? 'n' : ' ';

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	qes_keep_plan(&insert_plan,
				  "INSERT INTO qes_sign.callback_inbox (request_id, callback_type, source, "
				  "signature_request_id, document_id, signature_id, dedupe_key, body) "
				  "SELECT $1, $2, 'callback', $3, $4, $5, $6, $7 WHERE EXISTS (SELECT "
				  "FROM qes_sign.signatur_anfragen a WHERE a.id OPERATOR(pg_catalog.=) $1 "
				  "AND a.status OPERATOR(pg_catalog.=) ANY ('{offen,in_signatur}')) "
				  "ON CONFLICT DO NOTHING", 7, types);
	if (SPI_execute_plan(insert_plan, args, argnulls, false, 0) != SPI_OK_INSERT)
		elog(ERROR, "could not store a callback");
	stored = SPI_processed == 1;
	if (!stored)
	{
		qes_keep_plan(&exists_plan,
					  "SELECT FROM qes_sign.signatur_anfragen a WHERE a.id OPERATOR(pg_catalog.=) $1",
					  1, types);
		if (SPI_execute_plan(exists_plan, args, argnulls, true, 1) != SPI_OK_SELECT)
			elog(ERROR, "could not look up a request");
		if (SPI_processed == 0)
		{
			SPI_finish();
			qes_reject(QES_CALLBACKS_REJECTED, errmsg("callback names an unknown request"));
		}
	}
	SPI_finish();
	return stored;
}

/*
 * qes_sign_receive_callback is qes_sign.receive_callback(url, body): verify
 * the signed URL, store the callback once, wake the worker at commit.  In C
 * for speed (it is the portal's hot path); the rules are the inbox's unique
 * index and the worker's SQL.
 */
Datum
qes_sign_receive_callback(PG_FUNCTION_ARGS)
{
	TupleDesc	tupdesc;
	Datum		values[5];
	bool		nulls[5];
	Datum		receipt[3];
	bool		rnulls[3] = {false, false, false};
	bool		stored;

	if (!PG_ARGISNULL(1) && VARSIZE_ANY_EXHDR(PG_GETARG_BYTEA_PP(1)) > QES_MAX_CALLBACK_BODY)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("callback body is larger than %d bytes", QES_MAX_CALLBACK_BODY),
				 errdetail("Skribble's callbacks carry a few hundred bytes; nothing was stored.")));
	verify_url(PG_ARGISNULL(0) ? NULL : PG_GETARG_TEXT_PP(0), values, nulls);
	stored = store_callback(values, nulls, PG_ARGISNULL(1) ? (Datum) 0 : PG_GETARG_DATUM(1),
							PG_ARGISNULL(1));
	if (stored)
		qes_wake_at_commit();
	qes_count(QES_CALLBACKS_ACCEPTED);
	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "receive_callback must return a composite type");
	receipt[0] = values[0];
	receipt[1] = values[1];
	receipt[2] = BoolGetDatum(!stored);
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(BlessTupleDesc(tupdesc),
													  receipt, rnulls)));
}

/*
 * callback_mac computes the URL signature for a request uuid and a type.
 */
static char *
callback_mac(const char *uuid, const char *type, int typelen)
{
	unsigned char mac[QES_SHA256_LEN];
	char	   *msg = psprintf("qes_sign-callback-v1:%s:%.*s", uuid, typelen, type);

	qes_hmac_sha256(qes_callback_secret, strlen(qes_callback_secret),
					msg, strlen(msg), mac);
	return qes_base64(mac, QES_SHA256_LEN, true);
}

static bool
valid_type(const char *type, int len)
{
	for (int i = 0; i < lengthof(callback_types); i++)
		if (strlen(callback_types[i]) == len &&
			strncmp(callback_types[i], type, len) == 0)
			return true;
	return false;
}

/* uuid_shaped accepts exactly the canonical 8-4-4-4-12 hex form */
static bool
uuid_shaped(const char *s, int len)
{
	if (len != UUID_TEXT_LEN)
		return false;
	for (int i = 0; i < len; i++)
	{
		bool		dash = (i == 8 || i == 13 || i == 18 || i == 23);

		if (dash ? s[i] != '-' : !isxdigit((unsigned char) s[i]))
			return false;
	}
	return true;
}

/*
 * parse_query extracts the Skribble ids from the query string.  Values that
 * are still placeholders, or are not plain ids, come back as NULL: they are
 * hints for the worker, which asks Skribble for the real state anyway.
 */
static void
parse_query(const char *query, Datum *values, bool *nulls)
{
	for (int i = 0; i < lengthof(callback_params); i++)
	{
		const char *p = query;
		size_t		plen = strlen(callback_params[i].param);

		nulls[i] = true;
		while (p && *p)
		{
			const char *amp = strchr(p, '&');
			int			len = amp ? amp - p : (int) strlen(p);
			int			vlen = len - plen - 1;
			const char *v = p + plen + 1;

			if (len > plen && p[plen] == '=' &&
				strncmp(p, callback_params[i].param, plen) == 0 &&
				vlen > 0 && vlen <= MAX_ID_LEN &&
				strspn(v, ID_CHARS) >= (size_t) vlen &&
				strncmp(v, callback_params[i].placeholder, vlen) != 0)
			{
				values[i] = PointerGetDatum(cstring_to_text_with_len(v, vlen));
				nulls[i] = false;
			}
			p = amp ? amp + 1 : NULL;
		}
	}
}
