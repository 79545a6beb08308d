/*
 * callbacks_fuzz.c: libFuzzer harness over qes_sign's parsers and
 * verifiers that need no running server (suite 6 of "Proven reliability").
 *
 * It compiles the REAL sources, not copies: src/callbacks.c, src/webhook.c
 * and src/crypto.c are #included into this translation unit, so their
 * static functions (verify_url, uuid_shaped, valid_type, parse_query,
 * signature_matches, parse_timestamp) are called directly.  The few
 * server functions they use are stubbed below: memory (an arena freed
 * after every input), text conversion, ereport (errfinish longjmps back
 * here, with the SQLSTATE recorded), DirectFunctionCall1(uuid_in) (checks
 * that it is only ever handed a canonical uuid), qes_count.  Everything
 * the fuzzed paths never reach (SPI, tuples, the worker) aborts if called.
 *
 * Oracles, each an abort() (= a crash libFuzzer keeps):
 *  - every rejection of verify_url is SQLSTATE 28000, never another error;
 *  - an accepted URL's last three path segments carry the right MAC, and
 *    uuid_in is only reached with a canonical uuid;
 *  - parse_query returns only ids of 1..128 characters of [0-9A-Za-z_-]
 *    that are not the placeholders;
 *  - parse_timestamp accepts only 1..12 decimal digits;
 *  - signature_matches accepts only a header that has a "v1," token.
 *  - a correctly signed path with any query after it verifies, and so
 *    does prefix/<uuid>/<type>/<mac> for a prefix without "/?#".
 * Each input is tried raw, and spliced around a correctly signed
 * /<uuid>/<type>/<mac> (so the code after the MAC check is reached often).
 */
#include "../../../src/callbacks.c"
#include "../../../src/webhook.c"
#include "../../../src/crypto.c"

#include <setjmp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- stubs of the server ------------------------------------------------ */

char	   *qes_callback_base_url = "https://portal.example/qes/callback";
char	   *qes_callback_secret = "fuzz-callback-secret";
char	   *qes_webhook_secrets = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
int			qes_webhook_tolerance = 300;

static sigjmp_buf on_error;
static int	last_sqlstate;

/* an arena: everything palloc'd for one input is freed after it */
typedef struct Chunk
{
	struct Chunk *next;
	struct Chunk *prev;
	size_t		size;
	max_align_t align[];
} Chunk;
static Chunk arena = {&arena, &arena, 0};

void *
palloc(Size size)
{
	Chunk	   *c = malloc(sizeof(Chunk) + size + 1);

	if (!c)
		abort();
	c->size = size;
	c->next = arena.next;
	c->prev = &arena;
	arena.next->prev = c;
	arena.next = c;
	return c->align;
}
void *
palloc0(Size size)
{
	void	   *p = palloc(size);

	memset(p, 0, size);
	return p;
}
void *
palloc_extended(Size size, int flags)
{
	return palloc0(size);
}
void
pfree(void *p)
{
	Chunk	   *c = (Chunk *) ((char *) p - offsetof(Chunk, align));

	c->prev->next = c->next;
	c->next->prev = c->prev;
	free(c);
}
void *
repalloc(void *p, Size size)
{
	Chunk	   *c = (Chunk *) ((char *) p - offsetof(Chunk, align));
	void	   *n = palloc(size);

	memcpy(n, p, c->size < size ? c->size : size);
	pfree(p);
	return n;
}
static void
arena_reset(void)
{
	while (arena.next != &arena)
		pfree(arena.next->align);
}
char *
pstrdup(const char *s)
{
	size_t		n = strlen(s);
	char	   *p = palloc(n + 1);

	memcpy(p, s, n + 1);
	return p;
}
char *
psprintf(const char *fmt,...)
{
	va_list		ap;
	int			n;
	char	   *p;

	va_start(ap, fmt);
	n = pg_vsnprintf(NULL, 0, fmt, ap);
	va_end(ap);
	p = palloc(n + 1);
	va_start(ap, fmt);
	pg_vsnprintf(p, n + 1, fmt, ap);
	va_end(ap);
	return p;
}
size_t
pvsnprintf(char *buf, size_t len, const char *fmt, va_list args)
{
	int			n = pg_vsnprintf(buf, len, fmt, args);

	if (n < 0)
		abort();
	return (size_t) n < len ? (size_t) n : (size_t) n + 1;
}

char *
text_to_cstring(const text *t)
{
	int			len = VARSIZE_ANY_EXHDR(t);
	char	   *s = palloc(len + 1);

	memcpy(s, VARDATA_ANY(t), len);
	s[len] = '\0';
	return s;
}
text *
cstring_to_text_with_len(const char *s, int len)
{
	text	   *t = palloc(len + VARHDRSZ);

	SET_VARSIZE(t, len + VARHDRSZ);
	memcpy(VARDATA(t), s, len);
	return t;
}
text *
cstring_to_text(const char *s)
{
	return cstring_to_text_with_len(s, strlen(s));
}

/* ereport: record the SQLSTATE, longjmp back at the end */
bool
errstart(int elevel, const char *domain)
{
	if (elevel < ERROR)
		return false;
	last_sqlstate = ERRCODE_INTERNAL_ERROR;
	return true;
}
bool
errstart_cold(int elevel, const char *domain)
{
	return errstart(elevel, domain);
}
void
errfinish(const char *filename, int lineno, const char *funcname)
{
	siglongjmp(on_error, 1);
}
int
errcode(int sqlerrcode)
{
	last_sqlstate = sqlerrcode;
	return 0;
}
int errmsg(const char *fmt,...) { return 0; }
int errmsg_internal(const char *fmt,...) { return 0; }
int errdetail(const char *fmt,...) { return 0; }
int errhint(const char *fmt,...) { return 0; }

void qes_count(QesCounter counter) { }
TimestampTz qes_now(void) { return 0; }

/* uuid_in must only ever see the canonical form uuid_shaped accepts */
Datum
uuid_in(PG_FUNCTION_ARGS)
{
	abort();
}
Datum
uuid_out(PG_FUNCTION_ARGS)
{
	abort();
}
Datum
DirectFunctionCall1Coll(PGFunction func, Oid collation, Datum arg1)
{
	const char *s = DatumGetCString(arg1);

	if (func != uuid_in || strlen(s) != 36 || !uuid_shaped(s, 36))
	{
		fprintf(stderr, "uuid_in reached with \"%s\"\n", s);
		abort();
	}
	return (Datum) 1;
}

/* what the fuzzed paths never reach is in never.c (aborts if called) */

/* ---- the harness ---------------------------------------------------------- */

static const char *const types[] = {"success", "update", "error"};
static const char *const placeholders[] = {"SKRIBBLE_SIGNATURE_REQUEST_ID", "SKRIBBLE_DOCUMENT_ID", "SKRIBBLE_SIGNATURE_ID"};

static void
check_ids(Datum *values, bool *nulls)
{
	for (int i = 0; i < 3; i++)
	{
		text	   *t;
		int			len;

		if (nulls[i])
			continue;
		t = (text *) DatumGetPointer(values[i]);
		len = VARSIZE_ANY_EXHDR(t);
		if (len < 1 || len > MAX_ID_LEN)
			abort();
		for (int k = 0; k < len; k++)
			if (!strchr(ID_CHARS, VARDATA_ANY(t)[k]) || VARDATA_ANY(t)[k] == '\0')
				abort();
		if ((size_t) len == strlen(placeholders[i]) && memcmp(VARDATA_ANY(t), placeholders[i], len) == 0)
			abort();
	}
}

/* one URL through verify_url; returns true if accepted */
static bool
try_url(const char *url, size_t len)
{
	text	   *t = cstring_to_text_with_len(url, len);
	Datum		values[5];
	bool		nulls[5];

	if (sigsetjmp(on_error, 0) != 0)
	{
		if (last_sqlstate != ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION)
		{
			fprintf(stderr, "verify_url rejected with SQLSTATE %c%c%c%c%c, not 28000\n", PGUNSIXBIT(last_sqlstate), PGUNSIXBIT(last_sqlstate >> 6), PGUNSIXBIT(last_sqlstate >> 12), PGUNSIXBIT(last_sqlstate >> 18), PGUNSIXBIT(last_sqlstate >> 24));
			abort();
		}
		return false;
	}
	verify_url(t, values, nulls);
	check_ids(values + 2, nulls + 2);
	return true;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char	   *s;
	size_t		cut;
	const char *type;
	char		uuid[37] = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0";

	if (memchr(data, '\0', size))	/* text cannot hold NUL */
		return 0;
	s = palloc(size + 1);
	memcpy(s, data, size);
	s[size] = '\0';

	/* 1. raw */
	try_url(s, size);

	/* 2. spliced around a correctly signed tail: prefix/<uuid>/<type>/<mac>suffix */
	type = types[size % 3];
	cut = size ? (data[0] % (size + 1)) : 0;
	{
		char	   *mac = callback_mac(uuid, type, strlen(type));
		char	   *url = psprintf("%.*s/%s/%s/%s%s", (int) cut, s, uuid, type, mac, s + cut);

		bool		accepted = try_url(url, strlen(url));

		/* with no "/?#" in the input and nothing after the MAC it must verify */
		if (cut == size && strpbrk(s, "/?#") == NULL && !accepted)
		{
			fprintf(stderr, "a correctly signed URL was rejected: %s\n", url);
			abort();
		}
		/* any query after a correctly signed path must verify (ids are hints) */
		url = psprintf("https://h/%s/%s/%s?%s", uuid, type, mac, s);
		if (strchr(s, '#') == NULL && !try_url(url, strlen(url)))
		{
			fprintf(stderr, "a correctly signed URL with a query was rejected: %s\n", url);
			abort();
		}
	}

	/* 3. the pieces on their own */
	(void) uuid_shaped(s, size);
	(void) valid_type(s, size);
	{
		Datum		values[3];
		bool		nulls[3];

		parse_query(s, values, nulls);
		check_ids(values, nulls);
	}

	/* 4. webhook: timestamp and signature header */
	{
		int64		v;
		unsigned char mac[QES_SHA256_LEN];

		if (parse_timestamp(s, &v))
		{
			if (size < 1 || size > 12 || strspn(s, "0123456789") != size)
				abort();
		}
		qes_hmac_sha256("k", 1, s, size, mac);
		if (signature_matches(s, mac) && strstr(s, "v1,") == NULL)
			abort();
		{
			unsigned char out[64];

			(void) qes_base64_decode(s, size, out, sizeof(out));
		}
	}
	arena_reset();
	return 0;
}
