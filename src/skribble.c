/*-------------------------------------------------------------------------
 *
 * skribble.c
 *		The Skribble client's session: login with username and api-key, the
 *		JWT kept until shortly before its "exp" (Skribble has no refresh),
 *		and telling an expired or invalid token (401, or 403 with
 *		error.auth.token_*) from other refusals.  What each work item sends
 *		is decided in SQL (qes_sign._call_for); JSON is read with
 *		PostgreSQL's own parser.
 *
 *-------------------------------------------------------------------------
 */
#include "qes_sign.h"

#include "common/jsonapi.h"
#include "mb/pg_wchar.h"
#include "utils/json.h"
#include "utils/memutils.h"

#include "http.h"

/* renew this long before the token's exp (or after 3/4 of a short life) */
#define QES_TOKEN_MARGIN_S 60
/* assumed lifetime of a token whose exp cannot be read */
#define QES_TOKEN_DEFAULT_S (15 * 60)
/* a longer claimed lifetime is not believed (and would overflow timestamps) */
#define QES_TOKEN_MAX_S (24 * 60 * 60)
/* a longer token would not fit in the header lines servers accept */
#define QES_TOKEN_MAX_LEN 8192

static char *token = NULL;		/* in TopMemoryContext */
static TimestampTz token_renew_at = 0;
static int	token_generation = 0;

/*
 * qes_skribble_configured: credentials are set, so the worker logs in.
 */
bool
qes_skribble_configured(void)
{
	return qes_skribble_username[0] != '\0' && qes_skribble_api_key[0] != '\0';
}

bool
qes_skribble_have_token(void)
{
	return token != NULL && GetCurrentTimestamp() < token_renew_at;
}

const char *
qes_skribble_token(int *generation)
{
	*generation = token_generation;
	return token;
}

/*
 * qes_skribble_forget_token drops the token a refused call was sent with,
 * unless a newer one has arrived meanwhile.
 */
void
qes_skribble_forget_token(int generation)
{
	if (generation == token_generation && token != NULL)
	{
		pfree(token);
		token = NULL;
	}
}

/*
 * qes_skribble_login_call builds POST /access/login with the credentials
 * as JSON (the key is "api-key", with a hyphen).
 */
QesCall *
qes_skribble_login_call(MemoryContext parent)
{
	QesCall    *call;
	StringInfoData body;
	MemoryContext old;

	call = qes_call_new(parent, "login", "POST", "");
	call->service = "skribble";
	old = MemoryContextSwitchTo(call->cxt);
	call->url = qes_join_url(qes_skribble_url, "/access/login");
	initStringInfo(&body);
	appendStringInfoString(&body, "{\"username\":");
	escape_json(&body, qes_skribble_username);
	appendStringInfoString(&body, ",\"api-key\":");
	escape_json(&body, qes_skribble_api_key);
	appendStringInfoChar(&body, '}');
	call->body = body.data;
	call->body_len = body.len;
	call->content_type = "application/json";
	/* the login is documented as answering text/plain only */
	call->headers_in = list_make1(pstrdup("Accept: text/plain, */*"));
	MemoryContextSwitchTo(old);
	return call;
}

/*
 * jwt_lifetime reads how long a JWT lives (exp - iat, in seconds) from its
 * payload; 0 if it cannot tell.  Counting from receipt, not comparing exp
 * with the local clock, keeps a skewed clock from rejecting every token.
 * A lifetime that is not a number of seconds up to QES_TOKEN_MAX_S (NaN,
 * infinite, negative, absurdly long) counts as unknown.
 */
static int64
jwt_lifetime(const char *jwt)
{
	const char *p1 = strchr(jwt, '.');
	const char *p2 = p1 ? strchr(p1 + 1, '.') : NULL;
	StringInfoData b64;
	unsigned char *json;
	int			len;
	char	   *exp;
	char	   *iat;
	double		life;

	if (p2 == NULL || p2 - p1 - 1 > 8192)
		return 0;
	/* base64url without padding, as JWTs have it, to standard base64 */
	initStringInfo(&b64);
	for (const char *c = p1 + 1; c < p2; c++)
		appendStringInfoChar(&b64, *c == '-' ? '+' : *c == '_' ? '/' : *c);
	while (b64.len % 4 != 0)
		appendStringInfoChar(&b64, '=');
	json = palloc(b64.len);
	len = qes_base64_decode(b64.data, b64.len, json, b64.len);
	if (len <= 0)
		return 0;
	exp = qes_json_top_field((char *) json, len, "exp");
	iat = exp ? qes_json_top_field((char *) json, len, "iat") : NULL;
	if (exp == NULL || iat == NULL)
		return 0;
	life = strtod(exp, NULL) - strtod(iat, NULL);
	/* written so that NaN fails too; casting it or inf to int64 is undefined */
	if (!(life > 0 && life <= QES_TOKEN_MAX_S))
		return 0;
	return (int64) life;
}

/*
 * qes_skribble_take_login keeps the token of a successful login (the body
 * is the bare JWT, text/plain).  Returns false, with a warning that names
 * the status but never the credentials, if the login failed or answered
 * something that is no token of at most QES_TOKEN_MAX_LEN bytes.
 */
bool
qes_skribble_take_login(QesCall *call)
{
	const char *err = qes_call_error(call);
	const char *start = call->resp ? call->resp + strspn(call->resp, " \t\r\n\"") : "";
	char	   *jwt = NULL;
	int64		life;

	if (err == NULL && (call->status < 200 || call->status >= 300))
		err = psprintf("HTTP %ld", call->status);
	else if (err == NULL)
	{
		jwt = pnstrdup(start, strcspn(start, " \t\r\n\""));
		if (strchr(jwt, '.') == NULL || strlen(jwt) > QES_TOKEN_MAX_LEN)
			err = psprintf("HTTP %ld, but the answer is no JWT of at most %d bytes",
						   call->status, QES_TOKEN_MAX_LEN);
	}
	if (err != NULL)
	{
		qes_count(QES_LOGIN_FAILURES);
		ereport(WARNING,
				(errmsg("qes_sign: Skribble login failed: %s", err),
				 errhint("Check qes_sign.skribble_url, qes_sign.skribble_username and qes_sign.skribble_api_key.")));
		return false;
	}
	life = jwt_lifetime(jwt);
	if (life <= 0)
		life = QES_TOKEN_DEFAULT_S;
	if (token)
		pfree(token);
	token = MemoryContextStrdup(TopMemoryContext, jwt);
	token_renew_at = GetCurrentTimestamp() +
		(life - Min(QES_TOKEN_MARGIN_S, life / 4)) * USECS_PER_SEC;
	token_generation++;
	qes_count(QES_LOGINS);
	return true;
}

/*
 * qes_skribble_auth_failed tells whether a call was refused for its token:
 * 401, or 403 with key error.auth.token_expired / error.auth.token_invalid.
 */
bool
qes_skribble_auth_failed(QesCall *call)
{
	char	   *key;

	if (qes_call_error(call) != NULL)
		return false;
	if (call->status == 401)
		return true;
	if (call->status != 403 || call->resp == NULL)
		return false;
	key = qes_json_top_field(call->resp, call->resp_len, "key");
	return key != NULL && strncmp(key, "error.auth.token_", 17) == 0;
}

/* state of qes_json_top_field's parse */
typedef struct FieldSearch
{
	JsonLexContext *lex;
	const char *field;
	bool		in_field;
	char	   *value;
} FieldSearch;

static void
field_start(void *state, char *fname, bool isnull)
{
	FieldSearch *s = state;

	s->in_field = (s->lex->lex_level == 1 && strcmp(fname, s->field) == 0);
}

static void
field_scalar(void *state, char *token, JsonTokenType type)
{
	FieldSearch *s = state;

	if (s->in_field && s->lex->lex_level == 1 && type != JSON_TOKEN_NULL)
		s->value = token;
	s->in_field = false;
}

/*
 * qes_json_top_field returns the scalar value of a top-level field of a
 * JSON object as text, or NULL (absent, not a scalar, or not JSON).  It uses
 * PostgreSQL's JSON parser, which reports syntax errors instead of raising
 * them, but raises "stack depth limit exceeded" for deeply nested input.
 * The worker calls this outside any transaction, where an ERROR would end
 * the process (and the same answer would end the next one), so such an
 * error is caught here: a warning, and the field counts as absent.
 */
char *
qes_json_top_field(const char *json, size_t len, const char *field)
{
	MemoryContext cxt = CurrentMemoryContext;
	FieldSearch s = {0};
	JsonSemAction sem = {0};
	volatile JsonParseErrorType result = JSON_INVALID_TOKEN;

	if (len > INT_MAX || pg_verify_mbstr(PG_UTF8, json, len, true) == false)
		return NULL;
	s.lex = makeJsonLexContextCstringLen(unconstify(char *, json), (int) len,
										 PG_UTF8, true);
	s.field = field;
	sem.semstate = &s;
	sem.object_field_start = field_start;
	sem.scalar = field_scalar;
	PG_TRY();
	{
		result = pg_parse_json(s.lex, &sem);
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(cxt);
		edata = CopyErrorData();
		FlushErrorState();
		ereport(WARNING,
				(errcode(edata->sqlerrcode),
				 errmsg("qes_sign: could not read field \"%s\" of an answer: %s",
						field, edata->message)));
		FreeErrorData(edata);
	}
	PG_END_TRY();
	return result == JSON_SUCCESS ? s.value : NULL;
}

PG_FUNCTION_INFO_V1(qes_sign_url_escape);

/*
 * qes_sign_url_escape percent-encodes a path segment or query value for the
 * calls SQL builds (libcurl's escaping, not a home-made one).
 */
Datum
qes_sign_url_escape(PG_FUNCTION_ARGS)
{
	text	   *in = PG_GETARG_TEXT_PP(0);
	char	   *esc;
	text	   *out;

	/* a length of 0 would make libcurl run strlen() past the datum */
	if (VARSIZE_ANY_EXHDR(in) == 0)
		PG_RETURN_TEXT_P(cstring_to_text(""));
	esc = curl_easy_escape(NULL, VARDATA_ANY(in), VARSIZE_ANY_EXHDR(in));
	if (esc == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OUT_OF_MEMORY),
				 errmsg("out of memory")));
	out = cstring_to_text(esc);
	curl_free(esc);
	PG_RETURN_TEXT_P(out);
}
