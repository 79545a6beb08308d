/*-------------------------------------------------------------------------
 *
 * http.c
 *		The worker's HTTP layer: one libcurl multi handle with up to
 *		qes_sign.max_concurrency calls in flight, per-host connection bound,
 *		timeouts and TLS verification from the GUCs.  libcurl's callbacks
 *		never ereport; the progress callback aborts transfers as soon as the
 *		process is asked to stop, so a fast shutdown is prompt.
 *
 *-------------------------------------------------------------------------
 */
#include "qes_sign.h"

#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "postmaster/interrupt.h"
#include "catalog/pg_type.h"
#include "utils/memutils.h"

#include "http.h"

/* responses above this size fail the call (a document is at most 40 MB) */
#define QES_MAX_RESPONSE (100 * 1024 * 1024)

static CURLM *multi = NULL;
static int	in_flight = 0;
static dlist_head running = DLIST_STATIC_INIT(running);

static size_t on_data(char *ptr, size_t size, size_t nmemb, void *userdata);
static size_t on_header(char *ptr, size_t size, size_t nmemb, void *userdata);
static int	on_progress(void *clientp, curl_off_t dltotal, curl_off_t dlnow,
						curl_off_t ultotal, curl_off_t ulnow);

/*
 * qes_http_init sets libcurl up once per worker process.
 */
void
qes_http_init(void)
{
	if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
		elog(FATAL, "could not initialise libcurl");
	multi = curl_multi_init();
	if (multi == NULL)
		elog(FATAL, "could not create a libcurl multi handle");
	qes_http_configure();
}

/*
 * qes_http_configure applies the connection bounds (again after a reload).
 */
void
qes_http_configure(void)
{
	curl_multi_setopt(multi, CURLMOPT_MAX_HOST_CONNECTIONS,
					  (long) qes_max_host_connections);
	curl_multi_setopt(multi, CURLMOPT_MAX_TOTAL_CONNECTIONS,
					  (long) qes_max_concurrency);
	curl_multi_setopt(multi, CURLMOPT_MAXCONNECTS, (long) qes_max_concurrency);
}

/*
 * qes_call_new makes an empty call in its own memory context.
 */
QesCall *
qes_call_new(MemoryContext parent, const char *kind, const char *method,
			 const char *url)
{
	MemoryContext cxt = AllocSetContextCreate(parent, "qes_sign call",
											  ALLOCSET_SMALL_SIZES);
	QesCall    *call = MemoryContextAllocZero(cxt, sizeof(QesCall));

	call->cxt = cxt;
	call->kind = MemoryContextStrdup(cxt, kind);
	call->method = MemoryContextStrdup(cxt, method);
	call->url = MemoryContextStrdup(cxt, url);
	call->service = "";
	return call;
}

/*
 * qes_call_reset forgets an answer, so the call can be sent again.
 */
void
qes_call_reset(QesCall *call)
{
	free(call->resp);
	call->resp = NULL;
	call->resp_len = call->resp_cap = 0;
	call->resp_too_big = false;
	free(call->resp_headers);
	call->resp_headers = NULL;
	call->resp_headers_len = 0;
	call->status = 0;
	call->retry_after = 0;
	call->result = CURLE_OK;
	call->errbuf[0] = '\0';
}

void
qes_call_free(QesCall *call)
{
	qes_http_release(call);
	free(call->resp);
	free(call->resp_headers);
	MemoryContextDelete(call->cxt);
}

/*
 * qes_call_set_data makes a bytea datum the body of a call (an S3 upload):
 * detoasted or copied into the call's context, once (it may be 40 MB).
 */
void
qes_call_set_data(QesCall *call, Datum data)
{
	MemoryContext old = MemoryContextSwitchTo(call->cxt);
	bytea	   *copy = DatumGetByteaPCopy(data);

	MemoryContextSwitchTo(old);
	call->body = VARDATA(copy);
	call->body_len = VARSIZE(copy) - VARHDRSZ;
}

/*
 * text_lines copies the non-null elements of a text array into the call's
 * context.
 */
static List *
text_lines(QesCall *call, ArrayType *lines)
{
	MemoryContext old = MemoryContextSwitchTo(call->cxt);
	List	   *out = NIL;
	Datum	   *elems;
	bool	   *enulls;
	int			n;

	deconstruct_array(lines, TEXTOID, -1, false, TYPALIGN_INT, &elems, &enulls, &n);
	for (int i = 0; i < n; i++)
		if (!enulls[i])
			out = lappend(out, TextDatumGetCString(elems[i]));
	MemoryContextSwitchTo(old);
	return out;
}

/*
 * qes_call_add_headers appends the non-null "Name: value" lines of a text
 * array to the headers SQL gives a call.
 */
void
qes_call_add_headers(QesCall *call, ArrayType *lines)
{
	call->headers_in = list_concat(call->headers_in, text_lines(call, lines));
}

/*
 * qes_call_add_form makes the call a multipart/form-data POST: each line
 * "name=value" is a part, "name@filename" the call's data as a file.
 */
void
qes_call_add_form(QesCall *call, ArrayType *parts)
{
	call->form = list_concat(call->form, text_lines(call, parts));
}

/*
 * qes_join_url joins an API base and a path (palloc'd).
 */
char *
qes_join_url(const char *base, const char *path)
{
	size_t		len = strlen(base);

	while (len > 0 && base[len - 1] == '/')
		len--;
	return psprintf("%.*s%s", (int) len, base, path);
}

/*
 * qes_call_body returns the answer's body as a bytea (palloc'd).
 */
bytea *
qes_call_body(QesCall *call)
{
	bytea	   *body = palloc(VARHDRSZ + call->resp_len);

	SET_VARSIZE(body, VARHDRSZ + call->resp_len);
	if (call->resp_len)
		memcpy(VARDATA(body), call->resp, call->resp_len);
	return body;
}

/*
 * qes_call_error describes a transport failure, or returns NULL when the
 * server answered.
 */
const char *
qes_call_error(QesCall *call)
{
	if (call->resp_too_big)
		return "answer larger than 100 MB";
	if (call->result == CURLE_OK)
		return NULL;
	return call->errbuf[0] ? call->errbuf : curl_easy_strerror(call->result);
}

/*
 * qes_call_has_header tells whether SQL already gave a header of that name.
 */
bool
qes_call_has_header(QesCall *call, const char *name)
{
	ListCell   *lc;
	size_t		n = strlen(name);

	foreach(lc, call->headers_in)
		if (pg_strncasecmp(lfirst(lc), name, n) == 0 &&
			((char *) lfirst(lc))[n] == ':')
			return true;
	return false;
}

/*
 * qes_add_header appends one formatted header line.
 */
struct curl_slist *
qes_add_header(struct curl_slist *h, const char *fmt, const char *value)
{
	char	   *line = psprintf(fmt, value);

	h = curl_slist_append(h, line);
	pfree(line);
	return h;
}

/*
 * make_form builds the call's multipart body with libcurl's MIME API: a
 * part "name=value" is a field, "name@filename" the call's data as a file
 * (typed by its extension).  libcurl sets the boundary and Content-Type.
 */
static curl_mime *
make_form(QesCall *call)
{
	ListCell   *lc;

	call->mime = curl_mime_init(call->easy);
	foreach(lc, call->form)
	{
		char	   *line = lfirst(lc);
		size_t		n = strcspn(line, "=@");
		curl_mimepart *part = curl_mime_addpart(call->mime);
		char	   *name = pnstrdup(line, n);

		curl_mime_name(part, name);
		if (line[n] == '@')
		{
			const char *file = line + n + 1;
			size_t		flen = strlen(file);

			curl_mime_data(part, call->body ? call->body : "",
						   call->body ? call->body_len : 0);
			curl_mime_filename(part, file);
			curl_mime_type(part, flen > 4 && pg_strcasecmp(file + flen - 4, ".pdf") == 0 ?
						   "application/pdf" : "application/octet-stream");
		}
		else
			curl_mime_data(part, line[n] ? line + n + 1 : "", CURL_ZERO_TERMINATED);
		pfree(name);
	}
	return call->mime;
}

/*
 * set_request puts headers and body of a call on its easy handle: SQL's
 * headers first, then the defaults it did not give, each header once.
 */
static void
set_request(QesCall *call, const char *bearer)
{
	CURL	   *e = call->easy;
	struct curl_slist *h = NULL;
	ListCell   *lc;

	foreach(lc, call->headers_in)
		h = curl_slist_append(h, lfirst(lc));
	if (!qes_call_has_header(call, "Accept"))
		h = curl_slist_append(h, "Accept: application/json");
	if (call->content_type && !qes_call_has_header(call, "Content-Type"))
		h = qes_add_header(h, "Content-Type: %s", call->content_type);
	else if (!call->headers_signed && call->body == NULL && call->form == NIL &&
			 strcmp(call->method, "GET") != 0 &&
			 strcmp(call->method, "HEAD") != 0)
		h = curl_slist_append(h, "Content-Type:");	/* no libcurl form type without a form */
	/*
	 * No 100-continue round trip.  Not where every header is signed: libcurl
	 * would sign the empty header it never sends (S3 answers 100-continue
	 * anyway).
	 */
	if (!call->headers_signed)
		h = curl_slist_append(h, "Expect:");
	if (call->sign)
		h = call->sign(call, h);	/* e.g. S3: SigV4 by libcurl, digests */
	else if (bearer)
		h = qes_add_header(h, "Authorization: Bearer %s", bearer);
	call->headers = h;
	curl_easy_setopt(e, CURLOPT_HTTPHEADER, h);

	if (strcmp(call->method, "HEAD") == 0)
		curl_easy_setopt(e, CURLOPT_NOBODY, 1L);
	else if (strcmp(call->method, "GET") != 0)
	{
		/*
		 * libcurl silently sends a request again when a reused connection
		 * turns out closed; for a create that would be a second request at
		 * Skribble.  A fresh connection is never retried that way.
		 */
		curl_easy_setopt(e, CURLOPT_FRESH_CONNECT, 1L);
		if (call->form != NIL)
			curl_easy_setopt(e, CURLOPT_MIMEPOST, make_form(call));
		else
		{
			curl_easy_setopt(e, CURLOPT_POSTFIELDS, call->body ? call->body : "");
			curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE,
							 (curl_off_t) (call->body ? call->body_len : 0));
		}
		if (strcmp(call->method, "POST") != 0)
			curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, call->method);
	}
}

/*
 * prepare makes the easy handle of a call; false if libcurl has none.
 */
static bool
prepare(QesCall *call, const char *bearer)
{
	CURL	   *e = curl_easy_init();

	qes_call_reset(call);
	if (e == NULL)
	{
		call->result = CURLE_FAILED_INIT;
		return false;
	}
	call->easy = e;
	curl_easy_setopt(e, CURLOPT_URL, call->url);
	curl_easy_setopt(e, CURLOPT_PRIVATE, call);
	curl_easy_setopt(e, CURLOPT_ERRORBUFFER, call->errbuf);
	curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
	curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, (long) qes_http_connect_timeout);
	curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, (long) qes_http_timeout);
	curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, 1L);
	curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, 2L);
	if (qes_ca_file && qes_ca_file[0])
		curl_easy_setopt(e, CURLOPT_CAINFO, qes_ca_file);
	curl_easy_setopt(e, CURLOPT_USERAGENT, "qes_sign/1.0");
	curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_data);
	curl_easy_setopt(e, CURLOPT_WRITEDATA, call);
	curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_header);
	curl_easy_setopt(e, CURLOPT_HEADERDATA, call);
	curl_easy_setopt(e, CURLOPT_NOPROGRESS, 0L);
	curl_easy_setopt(e, CURLOPT_XFERINFOFUNCTION, on_progress);
	set_request(call, bearer);
	return true;
}

/*
 * finish_info reads status and Retry-After of a finished transfer and
 * frees its handle.
 */
static void
finish_info(QesCall *call, CURLcode result)
{
	call->result = result;
	curl_easy_getinfo(call->easy, CURLINFO_RESPONSE_CODE, &call->status);
	curl_easy_getinfo(call->easy, CURLINFO_RETRY_AFTER, &call->retry_after);
	qes_http_release(call);
}

/*
 * qes_http_perform runs one call to its end in the calling backend (a
 * download): interruptible through the progress callback, bounded by the
 * timeouts.  Interrupts are served once the handle is freed.
 */
void
qes_http_perform(QesCall *call)
{
	static bool initialised = false;

	if (!initialised && curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
		ereport(ERROR,
				(errcode(ERRCODE_SYSTEM_ERROR),
				 errmsg("could not initialise libcurl")));
	initialised = true;
	if (!prepare(call, NULL))
		return;
	finish_info(call, curl_easy_perform(call->easy));
	CHECK_FOR_INTERRUPTS();
}

/*
 * qes_http_start puts a call in flight.  On failure (no handle) the call is
 * left with an error and false is returned: the caller records it.
 */
bool
qes_http_start(QesCall *call, const char *bearer)
{
	if (!prepare(call, bearer))
		return false;
	if (curl_multi_add_handle(multi, call->easy) != CURLM_OK)
	{
		qes_http_release(call);
		call->result = CURLE_FAILED_INIT;
		return false;
	}
	dlist_push_tail(&running, &call->node);
	in_flight++;
	return true;
}

/*
 * qes_http_wait drives the transfers for at most timeout_ms and moves the
 * finished calls to *done.  Returns how many finished.
 */
int
qes_http_wait(int timeout_ms, dlist_head *done)
{
	CURLMsg    *msg;
	int			still;
	int			msgs;
	int			n = 0;

	curl_multi_poll(multi, NULL, 0, timeout_ms, NULL);
	curl_multi_perform(multi, &still);
	while ((msg = curl_multi_info_read(multi, &msgs)) != NULL)
	{
		QesCall    *call;

		if (msg->msg != CURLMSG_DONE)
			continue;
		curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **) &call);
		finish_info(call, msg->data.result);
		dlist_delete(&call->node);
		dlist_push_tail(done, &call->node);
		in_flight--;
		n++;
	}
	return n;
}

/*
 * qes_http_release frees a call's easy handle and headers (idempotent).
 */
void
qes_http_release(QesCall *call)
{
	if (call->easy)
	{
		curl_multi_remove_handle(multi, call->easy);
		curl_easy_cleanup(call->easy);
		call->easy = NULL;
	}
	if (call->headers)
	{
		curl_slist_free_all(call->headers);
		call->headers = NULL;
	}
	if (call->mime)
	{
		curl_mime_free(call->mime);
		call->mime = NULL;
	}
}

int
qes_http_in_flight(void)
{
	return in_flight;
}

/*
 * qes_http_shutdown aborts every transfer at process exit (on_proc_exit).
 */
void
qes_http_shutdown(int code, Datum arg)
{
	dlist_mutable_iter iter;

	dlist_foreach_modify(iter, &running)
	{
		QesCall    *call = dlist_container(QesCall, node, iter.cur);

		qes_http_release(call);
		free(call->resp);
		call->resp = NULL;
		dlist_delete(iter.cur);
	}
	in_flight = 0;
	if (multi)
		curl_multi_cleanup(multi);
	multi = NULL;
	curl_global_cleanup();
}

/*
 * on_data appends to the call's malloc'd buffer; returning less than asked
 * makes libcurl fail the transfer (no ereport here).
 */
static size_t
on_data(char *ptr, size_t size, size_t nmemb, void *userdata)
{
	QesCall    *call = (QesCall *) userdata;
	size_t		n = size * nmemb;

	if (call->resp_len + n + 1 > call->resp_cap)
	{
		size_t		cap = Max(call->resp_cap * 2, call->resp_len + n + 1);
		char	   *grown;

		if (cap > QES_MAX_RESPONSE)
		{
			call->resp_too_big = true;
			return 0;
		}
		grown = realloc(call->resp, Max(cap, 4096));
		if (grown == NULL)
			return 0;
		call->resp = grown;
		call->resp_cap = Max(cap, 4096);
	}
	memcpy(call->resp + call->resp_len, ptr, n);
	call->resp_len += n;
	call->resp[call->resp_len] = '\0';
	return n;
}

/*
 * on_header keeps the answer's header lines (at most 64 kB) in a malloc'd
 * buffer; SQL reads the ones it needs (an S3 HEAD's size and digest).
 */
static size_t
on_header(char *ptr, size_t size, size_t nmemb, void *userdata)
{
	QesCall    *call = (QesCall *) userdata;
	size_t		n = size * nmemb;
	char	   *grown;

	if (call->resp_headers_len + n + 1 > 65536)
		return n;				/* enough of them: ignore the rest */
	grown = realloc(call->resp_headers, call->resp_headers_len + n + 1);
	if (grown == NULL)
		return 0;
	call->resp_headers = grown;
	memcpy(grown + call->resp_headers_len, ptr, n);
	call->resp_headers_len += n;
	grown[call->resp_headers_len] = '\0';
	return n;
}

/*
 * on_progress aborts transfers when the process must stop (SIGTERM, fast
 * shutdown, pg_terminate_backend): only flags are read here.
 */
static int
on_progress(void *clientp, curl_off_t dltotal, curl_off_t dlnow,
			curl_off_t ultotal, curl_off_t ulnow)
{
	return (ProcDiePending || ShutdownRequestPending ||
			(InterruptPending && QueryCancelPending)) ? 1 : 0;
}
