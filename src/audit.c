/*-------------------------------------------------------------------------
 *
 * audit.c
 *		The append-only, hash-chained audit trail (SPEC section 6).  A BEFORE
 *		INSERT trigger numbers each entry and chains it to the previous one
 *		with SHA-256; the chain head is one row in qes_sign.audit_head, whose
 *		row lock serialises concurrent writers until they commit.  Another
 *		trigger refuses UPDATE, DELETE and TRUNCATE for everybody, and the
 *		head itself changes only from inside the chain trigger.
 *
 *-------------------------------------------------------------------------
 */
#include "qes_sign.h"

#include "access/htup_details.h"
#include "catalog/pg_type.h"
#include "commands/trigger.h"
#include "executor/spi.h"
#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "utils/jsonb.h"
#include "utils/uuid.h"

#define HEAD_ADVANCE_SQL \
	"INSERT INTO qes_sign.audit_head AS h (singleton, seq, hash) " \
	"VALUES (true, 1, $1) ON CONFLICT (singleton) " \
	"DO UPDATE SET seq = h.seq OPERATOR(pg_catalog.+) 1 RETURNING seq, hash"
#define HEAD_SET_SQL \
	"UPDATE qes_sign.audit_head SET hash = $1"

/* column numbers of qes_sign.audit_log, checked by audit_columns() */
enum
{
	A_SEQ = 1, A_AT, A_REQUEST_ID, A_VERWALTUNG, A_EVENT, A_ACTOR,
	A_DETAIL, A_PREV_HASH, A_HASH, A_NCOLS = A_HASH
};

static SPIPlanPtr head_advance_plan = NULL;
static SPIPlanPtr head_set_plan = NULL;

/* true while qes_sign_audit_chain itself writes the head */
static bool chain_writing = false;

static bytea *entry_hash(bytea *prev, int64 seq, TimestampTz at,
						 Datum request_id, bool request_null,
						 text *verwaltung, text *event, text *actor,
						 Jsonb *detail);
static bool restored_entry(Datum *values, bool *nulls);
static void append_field(StringInfo buf, const char *data, int len);
static bytea *bytes_to_bytea(const unsigned char *data, int len);
static void run_head_plan(SPIPlanPtr plan, Datum arg, int expected);

PG_FUNCTION_INFO_V1(qes_sign_audit_chain);
PG_FUNCTION_INFO_V1(qes_sign_append_only);
PG_FUNCTION_INFO_V1(qes_sign_audit_hash);
PG_FUNCTION_INFO_V1(qes_sign_audit_head_guard);

/*
 * qes_sign_audit_chain fills seq, at, actor, prev_hash and hash of a new
 * audit entry.  Whatever the inserter supplied for them is overwritten, so
 * no caller can forge the time, the role or the chain.  Only in restore
 * mode (qes_sign.restore, superusers) is a dumped entry taken as it was,
 * and then only if it carries the hash of its fields.
 */
Datum
qes_sign_audit_chain(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;
	TupleDesc	tupdesc;
	HeapTuple	tuple;
	Datum		values[A_NCOLS];
	bool		nulls[A_NCOLS];
	int			cols[5] = {A_SEQ, A_AT, A_ACTOR, A_PREV_HASH, A_HASH};
	Datum		newvals[5];
	bool		newnulls[5] = {false, false, false, false, false};
	Oid			bytea_type[1] = {BYTEAOID};
	unsigned char genesis[QES_SHA256_LEN] = {0};
	Datum		arg;
	bool		isnull;
	int64		seq;
	bytea	   *prev;
	bytea	   *hash;
	TimestampTz at = GetCurrentTimestamp();
	/* the worker acts for nobody but itself; say so rather than its role */
	text	   *actor = cstring_to_text(IsBackgroundWorker ? "qes_sign worker" :
										GetUserNameFromId(GetOuterUserId(), false));
	MemoryContext callercxt = CurrentMemoryContext;
	MemoryContext spicxt;

	if (!CALLED_AS_TRIGGER(fcinfo) ||
		!TRIGGER_FIRED_BEFORE(trigdata->tg_event) ||
		!TRIGGER_FIRED_FOR_ROW(trigdata->tg_event) ||
		!TRIGGER_FIRED_BY_INSERT(trigdata->tg_event))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("qes_sign_audit_chain must be fired BEFORE INSERT FOR EACH ROW")));
	tupdesc = trigdata->tg_relation->rd_att;
	if (tupdesc->natts != A_NCOLS)
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("qes_sign_audit_chain: unexpected layout of the audit table")));
	tuple = trigdata->tg_trigtuple;
	heap_deform_tuple(tuple, tupdesc, values, nulls);
	if (nulls[A_EVENT - 1])
		ereport(ERROR,
				(errcode(ERRCODE_NOT_NULL_VIOLATION),
				 errmsg("an audit entry needs an event")));
	if (restored_entry(values, nulls))
		return PointerGetDatum(tuple);

	SPI_connect();
	spicxt = CurrentMemoryContext;
	arg = PointerGetDatum(bytes_to_bytea(genesis, QES_SHA256_LEN));
	run_head_plan(qes_keep_plan(&head_advance_plan, HEAD_ADVANCE_SQL, 1, bytea_type),
				  arg, SPI_OK_INSERT_RETURNING);
	seq = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0],
									  SPI_tuptable->tupdesc, 1, &isnull));
	/* prev and hash must outlive SPI_finish */
	MemoryContextSwitchTo(callercxt);
	prev = DatumGetByteaPCopy(SPI_getbinval(SPI_tuptable->vals[0],
											SPI_tuptable->tupdesc, 2, &isnull));
	hash = entry_hash(prev, seq, at, values[A_REQUEST_ID - 1],
					  nulls[A_REQUEST_ID - 1],
					  nulls[A_VERWALTUNG - 1] ? NULL : DatumGetTextPP(values[A_VERWALTUNG - 1]),
					  DatumGetTextPP(values[A_EVENT - 1]), actor,
					  nulls[A_DETAIL - 1] ? NULL : DatumGetJsonbP(values[A_DETAIL - 1]));
	MemoryContextSwitchTo(spicxt);

	arg = PointerGetDatum(hash);
	run_head_plan(qes_keep_plan(&head_set_plan, HEAD_SET_SQL, 1, bytea_type),
				  arg, SPI_OK_UPDATE);
	SPI_finish();

	newvals[0] = Int64GetDatum(seq);
	newvals[1] = TimestampTzGetDatum(at);
	newvals[2] = PointerGetDatum(actor);
	newvals[3] = PointerGetDatum(prev);
	newvals[4] = PointerGetDatum(hash);
	return PointerGetDatum(heap_modify_tuple_by_cols(tuple, tupdesc, 5, cols,
													 newvals, newnulls));
}

/*
 * restored_entry decides about an entry that arrives with its number and
 * hash, as pg_restore brings it: in restore mode it is kept if its hash is
 * that of its fields (true); otherwise such an entry is refused, since
 * numbering it anew would silently rewrite a restored trail.  False for a
 * new entry.
 */
static bool
restored_entry(Datum *values, bool *nulls)
{
	int64		seq;
	bool		intact;
	bytea	   *given;
	bytea	   *hash;

	if (nulls[A_SEQ - 1] || nulls[A_HASH - 1])
		return false;
	seq = DatumGetInt64(values[A_SEQ - 1]);
	intact = !nulls[A_AT - 1] && !nulls[A_ACTOR - 1] && !nulls[A_PREV_HASH - 1];
	if (intact)
	{
		hash = entry_hash(DatumGetByteaPP(values[A_PREV_HASH - 1]), seq,
						  DatumGetTimestampTz(values[A_AT - 1]),
						  values[A_REQUEST_ID - 1], nulls[A_REQUEST_ID - 1],
						  nulls[A_VERWALTUNG - 1] ? NULL : DatumGetTextPP(values[A_VERWALTUNG - 1]),
						  DatumGetTextPP(values[A_EVENT - 1]),
						  DatumGetTextPP(values[A_ACTOR - 1]),
						  nulls[A_DETAIL - 1] ? NULL : DatumGetJsonbP(values[A_DETAIL - 1]));
		given = DatumGetByteaPP(values[A_HASH - 1]);
		intact = VARSIZE_ANY_EXHDR(given) == QES_SHA256_LEN &&
			memcmp(VARDATA_ANY(given), VARDATA(hash), QES_SHA256_LEN) == 0;
	}
	if (qes_restore_mode && !intact)
		ereport(ERROR,
				(errcode(ERRCODE_DATA_CORRUPTED),
				 errmsg("restored audit entry " INT64_FORMAT " does not carry the hash of its fields",
						seq),
				 errdetail("In restore mode audit entries are kept as they were dumped; "
						   "this one was changed or is incomplete."),
				 errhint("Run qes_sign.verify_audit_chain() in the database the dump came from.")));
	if (!qes_restore_mode && intact)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("audit entry " INT64_FORMAT " comes from an existing trail", seq),
				 errdetail("qes_sign numbers, times and chains new entries itself; "
						   "taking this one in would renumber a restored trail."),
				 errhint("To restore a dump, run pg_restore with "
						 "PGOPTIONS='-c qes_sign.restore=on'.")));
	return qes_restore_mode;
}

/*
 * run_head_plan runs one statement on the chain head with chain_writing
 * set, so that the head's guard lets it through; one row must change.
 */
static void
run_head_plan(SPIPlanPtr plan, Datum arg, int expected)
{
	volatile int rc = 0;

	chain_writing = true;
	PG_TRY();
	{
		rc = SPI_execute_plan(plan, &arg, NULL, false, 1);
	}
	PG_FINALLY();
	{
		chain_writing = false;
	}
	PG_END_TRY();
	if (rc != expected || SPI_processed != 1)
		elog(ERROR, "qes_sign: could not move the audit chain head");
}

/*
 * qes_sign_audit_head_guard is the BEFORE INSERT OR UPDATE row trigger of
 * qes_sign.audit_head: the head moves only with the chain (or comes back
 * from a dump in restore mode), so nobody can set it to match an edited
 * trail without disabling the trigger first.
 */
Datum
qes_sign_audit_head_guard(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;

	if (!CALLED_AS_TRIGGER(fcinfo) || !TRIGGER_FIRED_FOR_ROW(trigdata->tg_event))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("qes_sign_audit_head_guard must be fired FOR EACH ROW")));
	if (chain_writing ||
		(qes_restore_mode && TRIGGER_FIRED_BY_INSERT(trigdata->tg_event)))
		return PointerGetDatum(TRIGGER_FIRED_BY_UPDATE(trigdata->tg_event) ?
							   trigdata->tg_newtuple : trigdata->tg_trigtuple);
	ereport(ERROR,
			(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
			 errmsg("the head of the audit chain moves only with the chain"),
			 errdetail("qes_sign.audit_head is written by the audit trail's own trigger, for every role."),
			 errhint("Use qes_sign.verify_audit_chain() to check the trail.")));
	PG_RETURN_NULL();			/* keep compiler quiet */
}

/*
 * qes_sign_append_only refuses UPDATE, DELETE and TRUNCATE of the audit
 * trail, whoever asks.
 */
Datum
qes_sign_append_only(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;
	const char *op = "change";

	if (!CALLED_AS_TRIGGER(fcinfo))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("qes_sign_append_only must be called as a trigger")));
	if (TRIGGER_FIRED_BY_UPDATE(trigdata->tg_event))
		op = "UPDATE";
	else if (TRIGGER_FIRED_BY_DELETE(trigdata->tg_event))
		op = "DELETE";
	else if (TRIGGER_FIRED_BY_TRUNCATE(trigdata->tg_event))
		op = "TRUNCATE";

	ereport(ERROR,
			(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
			 errmsg("%s of %s is not allowed", op,
					RelationGetRelationName(trigdata->tg_relation)),
			 errdetail("The audit trail of qes_sign is append-only, for every role."),
			 errhint("Use qes_sign.verify_audit_chain() to check the trail.")));
	PG_RETURN_NULL();			/* keep compiler quiet */
}

/*
 * qes_sign_audit_hash recomputes an entry's hash from its fields, exactly as
 * the trigger did: verify_audit_chain() compares the two.
 */
Datum
qes_sign_audit_hash(PG_FUNCTION_ARGS)
{
	if (PG_ARGISNULL(0) || PG_ARGISNULL(1) || PG_ARGISNULL(2) ||
		PG_ARGISNULL(5) || PG_ARGISNULL(6))
		PG_RETURN_NULL();
	PG_RETURN_BYTEA_P(entry_hash(PG_GETARG_BYTEA_PP(0), PG_GETARG_INT64(1),
								 PG_GETARG_TIMESTAMPTZ(2),
								 PG_GETARG_DATUM(3), PG_ARGISNULL(3),
								 PG_ARGISNULL(4) ? NULL : PG_GETARG_TEXT_PP(4),
								 PG_GETARG_TEXT_PP(5), PG_GETARG_TEXT_PP(6),
								 PG_ARGISNULL(7) ? NULL : PG_GETARG_JSONB_P(7)));
}

/*
 * entry_hash is SHA-256 over the previous hash and a length-prefixed
 * encoding of the entry's fields (so no two entries encode alike).  The
 * time goes in as its integer microseconds, independent of DateStyle and
 * TimeZone; detail as jsonb's canonical text.
 */
static bytea *
entry_hash(bytea *prev, int64 seq, TimestampTz at,
		   Datum request_id, bool request_null, text *verwaltung,
		   text *event, text *actor, Jsonb *detail)
{
	StringInfoData buf;
	unsigned char digest[QES_SHA256_LEN];
	char	   *s;

	initStringInfo(&buf);
	appendStringInfoString(&buf, "qes_sign-audit-v1\n");
	append_field(&buf, VARDATA_ANY(prev), VARSIZE_ANY_EXHDR(prev));
	s = psprintf(INT64_FORMAT, seq);
	append_field(&buf, s, strlen(s));
	s = psprintf(INT64_FORMAT, (int64) at);
	append_field(&buf, s, strlen(s));
	s = request_null ? NULL : DatumGetCString(DirectFunctionCall1(uuid_out, request_id));
	append_field(&buf, s, s ? strlen(s) : -1);
	append_field(&buf, verwaltung ? VARDATA_ANY(verwaltung) : NULL,
				 verwaltung ? VARSIZE_ANY_EXHDR(verwaltung) : -1);
	append_field(&buf, VARDATA_ANY(event), VARSIZE_ANY_EXHDR(event));
	append_field(&buf, VARDATA_ANY(actor), VARSIZE_ANY_EXHDR(actor));
	s = detail ? JsonbToCString(NULL, &detail->root, VARSIZE(detail)) : NULL;
	append_field(&buf, s, s ? strlen(s) : -1);

	qes_sha256(buf.data, buf.len, digest);
	pfree(buf.data);
	return bytes_to_bytea(digest, QES_SHA256_LEN);
}

/* append_field writes "<len>:<bytes>\n", or "-\n" for NULL (len < 0). */
static void
append_field(StringInfo buf, const char *data, int len)
{
	if (len < 0)
	{
		appendStringInfoString(buf, "-\n");
		return;
	}
	appendStringInfo(buf, "%d:", len);
	appendBinaryStringInfo(buf, data, len);
	appendStringInfoChar(buf, '\n');
}

static bytea *
bytes_to_bytea(const unsigned char *data, int len)
{
	bytea	   *b = palloc(VARHDRSZ + len);

	SET_VARSIZE(b, VARHDRSZ + len);
	memcpy(VARDATA(b), data, len);
	return b;
}
