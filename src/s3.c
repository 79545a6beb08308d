/*-------------------------------------------------------------------------
 *
 * s3.c
 *		The archive bucket: S3 calls, signed with SigV4 (by libcurl) and
 *		carrying the payload's digests, for the worker (qes_s3_call) and
 *		from an ordinary backend: qes_sign.download reads an archived object
 *		back, qes_sign.purge deletes one, and the audit anchor is written and
 *		listed.  A backend's call runs to its end, stays interruptible (a
 *		cancel aborts the transfer) and is bounded by qes_sign.http_timeout.
 *		What an answer means is decided in SQL.
 *
 *-------------------------------------------------------------------------
 */
#include "qes_sign.h"

#include "funcapi.h"
#include "utils/memutils.h"

#include "http.h"

PG_FUNCTION_INFO_V1(qes_sign_s3_request);

static const char *const s3_methods[] = {"GET", "HEAD", "DELETE", "PUT"};

static char *qes_s3_url(const char *bucket, const char *key);
static struct curl_slist *s3_sign(QesCall *call, struct curl_slist *h);
static char *text_arg(FunctionCallInfo fcinfo, int n, const char *name);
static void perform(QesCall *call);

/*
 * qes_sign_s3_request(method, bucket, key, query, data, headers) returns
 * (status, body, error): the HTTP status and body, or the transport error.
 * query is appended as given (the caller sorts and encodes it, as SigV4's
 * canonical form wants); data is the body of a PUT; headers are extra
 * "Name: value" lines.
 */
Datum
qes_sign_s3_request(PG_FUNCTION_ARGS)
{
	char	   *method = text_arg(fcinfo, 0, "method");
	char	   *bucket = text_arg(fcinfo, 1, "bucket");
	char	   *key = text_arg(fcinfo, 2, "key");
	TupleDesc	desc;
	Datum		values[3];
	bool		nulls[3] = {false, false, false};
	QesCall    *call;
	const char *err;
	bool		known = false;

	for (int i = 0; i < lengthof(s3_methods); i++)
		known |= strcmp(method, s3_methods[i]) == 0;
	if (!known)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("S3 method must be GET, HEAD, DELETE or PUT")));
	if (qes_s3_endpoint[0] == '\0')
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("the archive bucket is not configured"),
				 errhint("Set qes_sign.s3_endpoint and the S3 credentials, then reload.")));
	if (get_call_result_type(fcinfo, NULL, &desc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");

	call = qes_s3_call(CurrentMemoryContext, "s3", method, bucket, key);
	if (!PG_ARGISNULL(3))
		call->url = psprintf("%s?%s", call->url, text_to_cstring(PG_GETARG_TEXT_PP(3)));
	if (!PG_ARGISNULL(4))
		qes_call_set_data(call, PG_GETARG_DATUM(4));
	if (!PG_ARGISNULL(5))
		qes_call_add_headers(call, PG_GETARG_ARRAYTYPE_P(5));
	perform(call);

	err = qes_call_error(call);
	values[0] = Int32GetDatum((int32) call->status);
	values[1] = PointerGetDatum(qes_call_body(call));
	if (err)
		values[2] = CStringGetTextDatum(err);
	else
		nulls[2] = true;
	free(call->resp);
	free(call->resp_headers);
	call->resp = call->resp_headers = NULL;
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(desc, values, nulls)));
}

/*
 * qes_s3_call makes a call on an object of a bucket, signed with the
 * archive's credentials (for the worker and for the calls below).
 */
QesCall *
qes_s3_call(MemoryContext parent, const char *kind, const char *method,
			const char *bucket, const char *key)
{
	QesCall    *call = qes_call_new(parent, kind, method, "");
	MemoryContext old = MemoryContextSwitchTo(call->cxt);

	call->url = qes_s3_url(bucket, key);
	call->service = "s3";
	call->sign = s3_sign;
	call->headers_signed = true;
	MemoryContextSwitchTo(old);
	return call;
}

/*
 * qes_s3_url is the path-style URL of an object: endpoint, bucket, and the
 * key's segments percent-encoded ('/' kept).
 */
static char *
qes_s3_url(const char *bucket, const char *key)
{
	StringInfoData url;
	size_t		len = strlen(qes_s3_endpoint);
	char	   *copy = pstrdup(key);
	char	   *seg;
	char	   *save = NULL;

	while (len > 0 && qes_s3_endpoint[len - 1] == '/')
		len--;
	initStringInfo(&url);
	appendBinaryStringInfo(&url, qes_s3_endpoint, len);
	appendStringInfo(&url, "/%s", bucket);
	for (seg = strtok_r(copy, "/", &save); seg; seg = strtok_r(NULL, "/", &save))
	{
		char	   *esc = curl_easy_escape(NULL, seg, 0);

		if (esc == NULL)
			ereport(ERROR, (errcode(ERRCODE_OUT_OF_MEMORY), errmsg("out of memory")));
		appendStringInfo(&url, "/%s", esc);
		curl_free(esc);
	}
	return url.data;
}

/*
 * s3_sign signs an S3 call with SigV4 (libcurl) and adds the payload's
 * digests: x-amz-content-sha256 (libcurl 7.88 would sign an empty-body
 * hash), and for an upload Content-MD5, x-amz-checksum-sha256 and the
 * SHA-256 as metadata, so the stored object can be checked later.  An
 * archive object's upload brings the digests taken when it was staged
 * (_put_digests): S3 then checks the bytes against those, and nothing is
 * hashed here.
 */
static struct curl_slist *
s3_sign(QesCall *call, struct curl_slist *h)
{
	unsigned char sha[QES_SHA256_LEN];
	unsigned char md5[16];
	char	   *hex;
	char	   *sigv4 = psprintf("aws:amz:%s:s3", qes_s3_region);

	curl_easy_setopt(call->easy, CURLOPT_AWS_SIGV4, sigv4);
	/* the key as recorded: no removal of dot segments */
	curl_easy_setopt(call->easy, CURLOPT_PATH_AS_IS, 1L);
	curl_easy_setopt(call->easy, CURLOPT_USERNAME, qes_s3_access_key);
	curl_easy_setopt(call->easy, CURLOPT_PASSWORD, qes_s3_secret_key);
	pfree(sigv4);

	if (qes_call_has_header(call, "x-amz-content-sha256"))
		return h;				/* the staged digests came with the call */
	hex = palloc(2 * QES_SHA256_LEN + 1);
	qes_sha256(call->body ? call->body : "", call->body ? call->body_len : 0, sha);
	hex_encode((char *) sha, QES_SHA256_LEN, hex);
	hex[2 * QES_SHA256_LEN] = '\0';
	h = qes_add_header(h, "x-amz-content-sha256: %s", hex);
	if (strcmp(call->method, "PUT") == 0)
	{
		qes_md5(call->body, call->body_len, md5);
		h = qes_add_header(h, "Content-MD5: %s", qes_base64(md5, 16, false));
		h = qes_add_header(h, "x-amz-checksum-sha256: %s", qes_base64(sha, QES_SHA256_LEN, false));
		h = qes_add_header(h, "x-amz-meta-sha256: %s", hex);
	}
	return h;
}

/*
 * text_arg returns a required text argument, naming it when it is NULL.
 */
static char *
text_arg(FunctionCallInfo fcinfo, int n, const char *name)
{
	if (PG_ARGISNULL(n))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("S3 %s must not be null", name)));
	return text_to_cstring(PG_GETARG_TEXT_PP(n));
}

/*
 * perform runs the call; on a cancel it frees what libcurl holds (not
 * palloc'd) before the error goes on.
 */
static void
perform(QesCall *call)
{
	PG_TRY();
	{
		qes_http_perform(call);
	}
	PG_CATCH();
	{
		qes_http_release(call);
		free(call->resp);
		free(call->resp_headers);
		PG_RE_THROW();
	}
	PG_END_TRY();
}
