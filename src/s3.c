/*-------------------------------------------------------------------------
 *
 * s3.c
 *		S3 calls from an ordinary backend: qes_sign.download reads an
 *		archived object back, qes_sign.purge deletes one.  The call is
 *		signed like the worker's (http.c: SigV4 by libcurl), runs to its
 *		end in this backend, stays interruptible (a cancel aborts the
 *		transfer) and is bounded by qes_sign.http_timeout.  What the
 *		answer means is decided in SQL.
 *
 *-------------------------------------------------------------------------
 */
#include "qes_sign.h"

#include "funcapi.h"
#include "utils/memutils.h"

#include "http.h"

PG_FUNCTION_INFO_V1(qes_sign_s3_request);

/*
 * qes_sign_s3_request(method, bucket, key) returns (status, body, error):
 * the HTTP status and body, or the transport error.
 */
Datum
qes_sign_s3_request(PG_FUNCTION_ARGS)
{
	char	   *method = text_to_cstring(PG_GETARG_TEXT_PP(0));
	char	   *bucket = text_to_cstring(PG_GETARG_TEXT_PP(1));
	char	   *key = text_to_cstring(PG_GETARG_TEXT_PP(2));
	TupleDesc	desc;
	Datum		values[3];
	bool		nulls[3] = {false, false, false};
	QesCall    *call;
	const char *err;
	bytea	   *body;

	if (strcmp(method, "GET") != 0 && strcmp(method, "HEAD") != 0 &&
		strcmp(method, "DELETE") != 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("S3 method must be GET, HEAD or DELETE")));
	if (qes_s3_endpoint[0] == '\0')
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("the archive bucket is not configured"),
				 errhint("Set qes_sign.s3_endpoint and the S3 credentials, then reload.")));
	if (get_call_result_type(fcinfo, NULL, &desc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");

	call = qes_call_new(CurrentMemoryContext, "s3", method, qes_s3_url(bucket, key));
	call->s3 = true;
	PG_TRY();
	{
		qes_http_perform(call);
	}
	PG_CATCH();
	{
		/* a cancel: libcurl's handle and buffers are not palloc'd */
		qes_http_release(call);
		free(call->resp);
		free(call->resp_headers);
		PG_RE_THROW();
	}
	PG_END_TRY();

	err = qes_call_error(call);
	values[0] = Int32GetDatum((int32) call->status);
	body = palloc(VARHDRSZ + call->resp_len);
	SET_VARSIZE(body, VARHDRSZ + call->resp_len);
	if (call->resp_len)
		memcpy(VARDATA(body), call->resp, call->resp_len);
	values[1] = PointerGetDatum(body);
	if (err)
		values[2] = CStringGetTextDatum(err);
	else
		nulls[2] = true;
	free(call->resp);
	free(call->resp_headers);
	call->resp = call->resp_headers = NULL;
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(desc, values, nulls)));
}
