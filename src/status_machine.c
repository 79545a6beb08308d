/*-------------------------------------------------------------------------
 *
 * status_machine.c
 *		The status machine of signature requests (SPEC section 2), enforced
 *		by a BEFORE trigger on qes_sign.signatur_anfragen for every role,
 *		the owner included.  The array transitions[] is the single source
 *		of truth; qes_sign.transitions shows it to SQL.
 *
 *-------------------------------------------------------------------------
 */
#include "qes_sign.h"

#include "commands/trigger.h"
#include "executor/spi.h"
#include "funcapi.h"
#include "lib/stringinfo.h"

/*
 * Prerequisite queries: each returns one boolean for request $1.
 */
#define ALL_SIGNED_SQL \
	"SELECT pg_catalog.count(*) OPERATOR(pg_catalog.>) 0 AND " \
	"pg_catalog.bool_and(status OPERATOR(pg_catalog.=) 'signed') " \
	"FROM qes_sign.signers WHERE request_id OPERATOR(pg_catalog.=) $1 " \
	"AND status OPERATOR(pg_catalog.<>) 'replaced'"
#define ARCHIVED_SQL \
	"SELECT pg_catalog.count(DISTINCT kind) OPERATOR(pg_catalog.=) 4 " \
	"FROM qes_sign.archive_objects " \
	"WHERE request_id OPERATOR(pg_catalog.=) $1 AND verified_at IS NOT NULL " \
	"AND kind OPERATOR(pg_catalog.=) ANY ('{signed_pdf,protocol_pdf,protocol_json,record_json}')"

typedef struct Transition
{
	const char *from;
	const char *to;
	const char *requires;		/* prerequisite, in words */
	const char *check_sql;		/* ... and as a query, or NULL */
} Transition;

static const Transition transitions[] = {
	{"offen", "in_signatur", NULL, NULL},
	{"offen", "vollstaendig", "every current signer signed", ALL_SIGNED_SQL},
	{"in_signatur", "vollstaendig", "every current signer signed", ALL_SIGNED_SQL},
	{"vollstaendig", "archiviert", "the archive objects recorded and verified", ARCHIVED_SQL},
	{"offen", "abgebrochen", NULL, NULL},
	{"in_signatur", "abgebrochen", NULL, NULL},
};

#define INITIAL_STATUS "offen"

/* kept plans of the prerequisite queries, by index into transitions[] */
static SPIPlanPtr check_plans[lengthof(transitions)];

static const Transition *find_transition(const char *from, const char *to);
static char *allowed_targets(const char *from);
static bool prerequisite_met(const Transition *t, Datum id);
static void check_prerequisite(const Transition *t, Datum id, const char *idtext);

PG_FUNCTION_INFO_V1(qes_sign_status_guard);
PG_FUNCTION_INFO_V1(qes_sign_transitions);

/*
 * qes_sign_status_guard is the BEFORE INSERT OR UPDATE row trigger that
 * admits new requests only as 'offen' and status changes only along
 * transitions[], with their prerequisites.
 */
Datum
qes_sign_status_guard(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;
	TupleDesc	tupdesc;
	HeapTuple	newtuple;
	int			statusnum;
	int			idnum;
	char	   *from;
	char	   *to;
	const Transition *t;
	bool		isnull;
	Datum		id;

	if (!CALLED_AS_TRIGGER(fcinfo) ||
		!TRIGGER_FIRED_BEFORE(trigdata->tg_event) ||
		!TRIGGER_FIRED_FOR_ROW(trigdata->tg_event))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("qes_sign_status_guard must be fired BEFORE ... FOR EACH ROW")));

	tupdesc = trigdata->tg_relation->rd_att;
	statusnum = SPI_fnumber(tupdesc, "status");
	idnum = SPI_fnumber(tupdesc, "id");
	if (statusnum <= 0 || idnum <= 0)
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("qes_sign_status_guard needs columns \"id\" and \"status\"")));

	newtuple = TRIGGER_FIRED_BY_UPDATE(trigdata->tg_event) ?
		trigdata->tg_newtuple : trigdata->tg_trigtuple;
	to = SPI_getvalue(newtuple, tupdesc, statusnum);
	id = SPI_getbinval(newtuple, tupdesc, idnum, &isnull);

	if (TRIGGER_FIRED_BY_INSERT(trigdata->tg_event))
	{
		/* a restored row passed the machine in the database it was dumped from */
		if (!qes_restore_mode && (to == NULL || strcmp(to, INITIAL_STATUS) != 0))
			ereport(ERROR,
					(errcode(ERRCODE_CHECK_VIOLATION),
					 errmsg("a new signature request must start in status \"%s\"",
							INITIAL_STATUS),
					 errdetail("The row has status \"%s\".", to ? to : "NULL"),
					 errhint("To restore a dump, run pg_restore with "
							 "PGOPTIONS='-c qes_sign.restore=on'.")));
		return PointerGetDatum(newtuple);
	}

	from = SPI_getvalue(trigdata->tg_trigtuple, tupdesc, statusnum);
	if (from != NULL && to != NULL && strcmp(from, to) == 0)
		return PointerGetDatum(newtuple);

	t = (to && from) ? find_transition(from, to) : NULL;
	if (t == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_CHECK_VIOLATION),
				 errmsg("signature request %s cannot change status from \"%s\" to \"%s\"",
						SPI_getvalue(newtuple, tupdesc, idnum),
						from ? from : "NULL", to ? to : "NULL"),
				 errdetail("%s", allowed_targets(from)),
				 errhint("See qes_sign.transitions for the status machine.")));

	if (t->check_sql)
		check_prerequisite(t, id, SPI_getvalue(newtuple, tupdesc, idnum));
	return PointerGetDatum(newtuple);
}

static const Transition *
find_transition(const char *from, const char *to)
{
	for (int i = 0; i < lengthof(transitions); i++)
		if (strcmp(transitions[i].from, from) == 0 &&
			strcmp(transitions[i].to, to) == 0)
			return &transitions[i];
	return NULL;
}

/*
 * allowed_targets describes where a request in status from may go.
 */
static char *
allowed_targets(const char *from)
{
	StringInfoData buf;
	int			n = 0;

	initStringInfo(&buf);
	for (int i = 0; from && i < lengthof(transitions); i++)
	{
		if (strcmp(transitions[i].from, from) != 0)
			continue;
		appendStringInfo(&buf, "%s\"%s\"", n++ ? ", " : "", transitions[i].to);
	}
	if (n == 0)
		return psprintf("Status \"%s\" is final.", from ? from : "NULL");
	return psprintf("From \"%s\" a request may only go to %s.", from, buf.data);
}

/*
 * check_prerequisite raises 55000 when transition t needs a condition the
 * request does not meet yet.
 */
static void
check_prerequisite(const Transition *t, Datum id, const char *idtext)
{
	if (!prerequisite_met(t, id))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("signature request %s cannot become \"%s\" yet",
						idtext, t->to),
				 errdetail("Status \"%s\" requires %s.", t->to, t->requires)));
}

/*
 * prerequisite_met runs the kept prerequisite query of t for request id.
 */
static bool
prerequisite_met(const Transition *t, Datum id)
{
	Oid			argtypes[1] = {UUIDOID};
	bool		result = false;
	bool		isnull;

	SPI_connect();
	if (SPI_execute_plan(qes_keep_plan(&check_plans[t - transitions], t->check_sql,
									   1, argtypes),
						 &id, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "qes_sign prerequisite query failed");
	if (SPI_processed == 1)
	{
		Datum		d = SPI_getbinval(SPI_tuptable->vals[0],
									  SPI_tuptable->tupdesc, 1, &isnull);

		result = !isnull && DatumGetBool(d);
	}
	SPI_finish();
	return result;
}

/*
 * qes_sign_transitions returns transitions[] as (from, to, requires) rows.
 */
Datum
qes_sign_transitions(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;

	InitMaterializedSRF(fcinfo, 0);
	for (int i = 0; i < lengthof(transitions); i++)
	{
		Datum		values[3];
		bool		nulls[3] = {false, false, false};

		values[0] = CStringGetTextDatum(transitions[i].from);
		values[1] = CStringGetTextDatum(transitions[i].to);
		if (transitions[i].requires)
			values[2] = CStringGetTextDatum(transitions[i].requires);
		else
			nulls[2] = true;
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	return (Datum) 0;
}
