/*-------------------------------------------------------------------------
 *
 * s3.c
 *		S3 calls from an ordinary backend: qes_sign.download reads an
 *		archived object back, qes_sign.purge deletes one, and the audit
 *		anchor is written and listed.  The call is signed like the worker's
 *		(http.c: SigV4 by libcurl), runs to its end in this backend, stays
 *		interruptible (a cancel aborts the transfer) and is bounded by
 *		qes_sign.http_timeout.  What the answer means is decided in SQL.
 *
 *-------------------------------------------------------------------------
 */
#include "qes_sign.h"

#include "funcapi.h"
#include "utils/memutils.h"

#include "http.h"

PG_FUNCTION_INFO_V1(qes_sign_s3_request);

static const char *const s3_methods[] = {"GET", "HEAD", "DELETE", "PUT"};

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

	call = qes_call_new(CurrentMemoryContext, "s3", method, qes_s3_url(bucket, key));
	call->s3 = true;
	if (!PG_ARGISNULL(3))
		call->url = psprintf("%s?%s", call->url, text_to_cstring(PG_GETARG_TEXT_PP(3)));
	if (!PG_ARGISNULL(4))
		qes_call_set_data(call, PG_GETARG_BYTEA_PP(4));
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
