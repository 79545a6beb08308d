/*-------------------------------------------------------------------------
 *
 * worker.c
 *		The background worker: one per database in qes_sign.database.  It
 *		sleeps on its latch (set at commit by the API functions), claims due
 *		work items in a short transaction, does the Skribble calls outside
 *		any transaction with many in flight (http.c), and records the
 *		answers in another short transaction.  The rules (which call, what
 *		an answer means, retries) are SQL functions: _claim, _record_result
 *		(_record_unapplied for an answer it cannot apply) and _tick.  On a
 *		hot standby it waits for promotion.
 *
 *-------------------------------------------------------------------------
 */
#include "qes_sign.h"

#include "access/xact.h"
#include "access/xlog.h"
#include "catalog/pg_type.h"
#include "commands/extension.h"
#include "executor/spi.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/pmsignal.h"
#include "storage/proc.h"
#include "tcop/tcopprot.h"
#include "utils/array.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/varlena.h"

#include "http.h"

/* the timer: reconciliation, expiry and due retries are looked at this often */
#define QES_TICK_MS 1000
/* while calls are in flight, new work is noticed within this time */
#define QES_BUSY_POLL_MS 20

typedef struct WorkerState
{
	MemoryContext calls_cxt;	/* parent of every call's context */
	dlist_head	waiting;		/* refused for their token: resend after login */
	dlist_head	unsent;			/* could not be started: record as failed */
	QesCall    *login;			/* login in flight, or NULL */
	int			login_failures;
	TimestampTz next_login;
	TimestampTz next_tick;
	TimestampTz next_claim;
	bool		claim_now;		/* woken by a commit: new work may be there */
	bool		attached;		/* extension found, leases taken back */
	bool		was_standby;	/* saw recovery: creates may be unrecorded */
	bool		reloaded;		/* configuration reloaded since the last step */
} WorkerState;

/* what the loop allocates outside transactions; reset every round */
static MemoryContext loop_cxt = NULL;

static SPIPlanPtr record_plan = NULL;
static SPIPlanPtr unapplied_plan = NULL;
static SPIPlanPtr claim_plan = NULL;
static SPIPlanPtr next_due_plan = NULL;
static SPIPlanPtr same_plan = NULL;

PGDLLEXPORT void qes_worker_main(Datum arg);

/*
 * qes_worker_register starts one worker per database named in
 * qes_sign.database (called from _PG_init while preloading).
 */
void
qes_worker_register(void)
{
	char	   *list = pstrdup(qes_database);
	List	   *names;
	ListCell   *lc;

	if (!SplitGUCList(list, ',', &names))
	{
		ereport(LOG,
				(errmsg("qes_sign.database is not a valid list of database names"),
				 errdetail("No qes_sign worker is started.")));
		return;
	}
	foreach(lc, names)
	{
		const char *db = lfirst(lc);
		BackgroundWorker bgw = {0};
		bool		seen = false;

		for (int i = 0; i < foreach_current_index(lc); i++)
			seen |= strcmp(list_nth(names, i), db) == 0;
		if (db[0] == '\0' || seen)
			continue;
		bgw.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
		bgw.bgw_start_time = BgWorkerStart_ConsistentState;
		bgw.bgw_restart_time = qes_worker_restart_delay;
		strlcpy(bgw.bgw_library_name, "qes_sign", BGW_MAXLEN);
		strlcpy(bgw.bgw_function_name, "qes_worker_main", BGW_MAXLEN);
		snprintf(bgw.bgw_name, BGW_MAXLEN, "qes_sign worker for database %s", db);
		strlcpy(bgw.bgw_type, "qes_sign worker", BGW_MAXLEN);
		strlcpy(bgw.bgw_extra, db, BGW_EXTRALEN);
		RegisterBackgroundWorker(&bgw);
	}
}

/*
 * report tells pg_stat_activity what the worker does, when that changes.
 */
static void
report(const char *activity)
{
	static char last[128];

	if (strcmp(last, activity) == 0)
		return;
	strlcpy(last, activity, sizeof(last));
	pgstat_report_activity(STATE_IDLE, activity);
}

static void
begin_xact(void)
{
	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	PushActiveSnapshot(GetTransactionSnapshot());
}

static void
end_xact(void)
{
	SPI_finish();
	PopActiveSnapshot();
	CommitTransactionCommand();
	MemoryContextSwitchTo(loop_cxt);	/* commit left us in TopMemoryContext */
	pgstat_report_stat(false);
}

/*
 * schema_current: the installed extension is the version this library
 * speaks.  After a package upgrade the worker waits, saying so once, until
 * ALTER EXTENSION qes_sign UPDATE has run (the older schema lacks what
 * this library calls).
 */
static bool
schema_current(void)
{
	static bool told = false;
	char	   *v = NULL;

	if (SPI_execute("SELECT extversion FROM pg_catalog.pg_extension WHERE extname = 'qes_sign'",
					true, 1) == SPI_OK_SELECT && SPI_processed == 1)
		v = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);
	if (v != NULL && strcmp(v, QES_SCHEMA_VERSION) == 0)
	{
		told = false;
		return true;
	}
	if (!told)
		ereport(LOG,
				(errmsg("qes_sign worker waits: the extension is version %s, this library needs %s",
						v ? v : "(none)", QES_SCHEMA_VERSION),
				 errhint("Run ALTER EXTENSION qes_sign UPDATE in database \"%s\".",
						 MyBgworkerEntry->bgw_extra)));
	told = true;
	return false;
}

/*
 * attach finds the extension in the database and takes back the work items
 * a previous incarnation had leased.  After a promotion, creates the old
 * primary sent may not have reached this server: they are looked up first.
 * False while the extension is not installed.
 */
static bool
attach(bool promoted)
{
	bool		found;

	begin_xact();
	found = OidIsValid(get_extension_oid("qes_sign", true)) && schema_current();
	if (found &&
		SPI_execute(promoted ? "SELECT qes_sign._worker_started(true)"
					: "SELECT qes_sign._worker_started()", false, 0) == SPI_OK_SELECT)
	{
		bool		isnull;
		int64		n = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0],
													SPI_tuptable->tupdesc, 1, &isnull));

		if (n > 0)
			ereport(LOG,
					(errmsg("qes_sign worker took back %lld work items of its predecessor",
							(long long) n)));
	}
	end_xact();
	return found;
}

/*
 * run_in_subxact runs one kept plan whose single column is text in an
 * internal subtransaction, so that one bad answer cannot undo the others.
 * Returns that text, or NULL with *error set (in the caller's context) if
 * the plan raised; the subtransaction is then rolled back.
 */
static char *
run_in_subxact(SPIPlanPtr *plan, const char *sql, int nargs, Oid *types,
			   Datum *values, const char *nulls, char **error)
{
	MemoryContext cxt = CurrentMemoryContext;
	ResourceOwner owner = CurrentResourceOwner;
	char	   *volatile result = NULL;

	BeginInternalSubTransaction(NULL);
	MemoryContextSwitchTo(cxt);
	PG_TRY();
	{
		bool		isnull;
		Datum		d;

		if (SPI_execute_plan(qes_keep_plan(plan, sql, nargs, types),
							 values, nulls, false, 1) != SPI_OK_SELECT)
			elog(ERROR, "could not run \"%s\"", sql);
		d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
		result = isnull ? "" : TextDatumGetCString(d);
		ReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(cxt);
		CurrentResourceOwner = owner;
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(cxt);
		edata = CopyErrorData();
		FlushErrorState();
		RollbackAndReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(cxt);
		CurrentResourceOwner = owner;
		*error = pstrdup(edata->message);
		FreeErrorData(edata);
	}
	PG_END_TRY();
	return result;
}

/*
 * record_one hands one answer to qes_sign._record_result.  An answer it
 * cannot apply (it raised) is handed to qes_sign._record_unapplied, which
 * counts it as a failed attempt: retried, then given up visibly, instead
 * of being sent again each time its lease runs out.  No error escapes.
 */
static void
record_one(QesCall *call)
{
	Oid			types[7] = {INT8OID, TEXTOID, INT4OID, BYTEAOID, INT4OID, TEXTOID, TEXTOID};
	Datum		values[7];
	char		nulls[7];
	const char *err = qes_call_error(call);
	char	   *outcome;
	char	   *error = NULL;

	memset(nulls, ' ', sizeof(nulls));
	values[0] = Int64GetDatum(call->item_id);
	values[1] = CStringGetTextDatum(call->kind);
	values[2] = Int32GetDatum((int32) call->status);
	values[3] = PointerGetDatum(qes_call_body(call));
	values[4] = Int32GetDatum((int32) Min(call->retry_after, 86400));
	values[5] = err ? CStringGetTextDatum(err) : (Datum) 0;
	if (err == NULL)
		nulls[5] = 'n';
	/* header lines are text only if they are valid in the database encoding */
	values[6] = CStringGetTextDatum(call->resp_headers &&
									pg_verifymbstr(call->resp_headers, call->resp_headers_len, true) ?
									call->resp_headers : "");

	outcome = run_in_subxact(&record_plan,
							 "SELECT qes_sign._record_result($1, $2, $3, $4, $5, $6, $7)",
							 7, types, values, nulls, &error);
	if (outcome == NULL)
	{
		Oid			utypes[3] = {INT8OID, TEXTOID, TEXTOID};
		Datum		uvalues[3] = {values[0], values[1], CStringGetTextDatum(error)};

		ereport(WARNING,
				(errmsg("qes_sign worker could not apply the answer to work item %lld: %s",
						(long long) call->item_id, error)));
		outcome = run_in_subxact(&unapplied_plan,
								 "SELECT qes_sign._record_unapplied($1, $2, $3)",
								 3, utypes, uvalues, NULL, &error);
		if (outcome == NULL)
			ereport(WARNING,
					(errmsg("qes_sign worker could not record the answer to work item %lld as a failed attempt: %s",
							(long long) call->item_id, error),
					 errdetail("The work item is tried again when its lease runs out.")));
	}
	if (outcome && strcmp(outcome, "retry") == 0)
		qes_count(QES_API_RETRIES);
	else if (outcome && strcmp(outcome, "failed") == 0)
		qes_count(QES_API_FAILURES);
	qes_count(QES_API_CALLS);
}

/*
 * new_call makes the call of one target: the bucket (SigV4), Yousign (its
 * API key) or Skribble (the session token, added when it is sent).
 */
static QesCall *
new_call(WorkerState *st, const char *target, const char *kind,
		 const char *method, const char *path)
{
	QesCall    *call;

	if (strcmp(target, "s3") == 0)
		return qes_s3_call(st->calls_cxt, kind, method, qes_s3_bucket, path);
	if (strcmp(target, "yousign") == 0)
		return qes_yousign_call(st->calls_cxt, kind, method, path);
	call = qes_call_new(st->calls_cxt, kind, method, "");
	call->url = MemoryContextStrdup(call->cxt, qes_join_url(qes_skribble_url, path));
	call->service = "skribble";
	return call;
}

/*
 * same_candidate: a state answer (a refresh's GET, 2xx) that may equal the
 * last one applied in full
 */
static bool
same_candidate(QesCall *call)
{
	return call->item_id > 0 && strcmp(call->kind, "get") == 0 && call->sign == NULL &&
		qes_call_error(call) == NULL && call->status >= 200 && call->status < 300;
}

/*
 * record_same hands every state answer of this step to
 * qes_sign._record_same in one statement: those equal to the last state
 * applied in full only mark their request synced (the steady state of
 * reconciliation costs one statement per step, not per call).  They are
 * counted and freed; the rest stay in *done for record_one.  An error
 * leaves all of them to record_one.
 */
static void
record_same(dlist_head *done)
{
	MemoryContext cxt = CurrentMemoryContext;
	ResourceOwner owner = CurrentResourceOwner;
	dlist_mutable_iter it;
	Datum	   *items = palloc(sizeof(Datum) * qes_max_concurrency * 2);
	Datum	   *bodies = palloc(sizeof(Datum) * qes_max_concurrency * 2);
	int			n = 0;

	dlist_foreach_modify(it, done)
	{
		QesCall    *call = dlist_container(QesCall, node, it.cur);

		if (n < qes_max_concurrency * 2 && same_candidate(call))
		{
			items[n] = Int64GetDatum(call->item_id);
			bodies[n++] = PointerGetDatum(qes_call_body(call));
		}
	}
	if (n == 0)
		return;
	BeginInternalSubTransaction(NULL);
	MemoryContextSwitchTo(cxt);
	PG_TRY();
	{
		Oid			types[2] = {INT8ARRAYOID, BYTEAARRAYOID};
		Datum		values[2] = {
			PointerGetDatum(construct_array(items, n, INT8OID, 8, true, TYPALIGN_DOUBLE)),
		PointerGetDatum(construct_array(bodies, n, BYTEAOID, -1, false, TYPALIGN_INT))};

		if (SPI_execute_plan(qes_keep_plan(&same_plan, "SELECT qes_sign._record_same($1, $2)", 2, types),
							 values, NULL, false, 0) != SPI_OK_SELECT)
			elog(ERROR, "qes_sign._record_same failed");
		for (uint64 i = 0; i < SPI_processed; i++)
		{
			bool		isnull;
			int64		id = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1, &isnull));

			dlist_foreach_modify(it, done)
			{
				QesCall    *call = dlist_container(QesCall, node, it.cur);

				if (call->item_id == id && same_candidate(call))
				{
					dlist_delete(it.cur);
					qes_call_free(call);
					qes_count(QES_API_CALLS);
					break;
				}
			}
		}
		ReleaseCurrentSubTransaction();
	}
	PG_CATCH();
	{
		MemoryContextSwitchTo(cxt);
		FlushErrorState();
		RollbackAndReleaseCurrentSubTransaction();
	}
	PG_END_TRY();
	MemoryContextSwitchTo(cxt);
	CurrentResourceOwner = owner;
}

/*
 * call_from_row turns one row of qes_sign._claim into a call, in its own
 * context under the worker's calls context (it outlives the transaction).
 */
static QesCall *
call_from_row(WorkerState *st, HeapTuple tup, TupleDesc desc)
{
	bool		isnull;
	char	   *kind = SPI_getvalue(tup, desc, 2);
	char	   *target = SPI_getvalue(tup, desc, 3);
	char	   *method = SPI_getvalue(tup, desc, 4);
	char	   *path = SPI_getvalue(tup, desc, 5);
	QesCall    *call = new_call(st, target, kind, method, path);
	MemoryContext old = MemoryContextSwitchTo(call->cxt);
	Datum		body;
	Datum		data;
	Datum		headers;
	Datum		form;

	call->item_id = DatumGetInt64(SPI_getbinval(tup, desc, 1, &isnull));
	body = SPI_getbinval(tup, desc, 6, &isnull);
	if (!isnull)
	{
		call->body = TextDatumGetCString(body);
		call->body_len = strlen(call->body);
		call->content_type = "application/json";
	}
	data = SPI_getbinval(tup, desc, 7, &isnull);
	if (!isnull)
		qes_call_set_data(call, data);
	headers = SPI_getbinval(tup, desc, 8, &isnull);
	if (!isnull)
		qes_call_add_headers(call, DatumGetArrayTypeP(headers));
	form = SPI_getbinval(tup, desc, 9, &isnull);
	if (!isnull)
		qes_call_add_form(call, DatumGetArrayTypeP(form));
	MemoryContextSwitchTo(old);
	return call;
}

/*
 * ready_targets lists the providers whose calls can be sent now, for
 * qes_sign._claim and _next_due: Skribble with a session token, Yousign
 * with an API key.  The bucket's calls never wait for either.
 */
static Datum
ready_targets(void)
{
	Datum		names[2];
	int			n = 0;

	if (qes_skribble_have_token())
		names[n++] = CStringGetTextDatum("skribble");
	if (qes_yousign_ready())
		names[n++] = CStringGetTextDatum("yousign");
	return PointerGetDatum(construct_array(names, n, TEXTOID, -1, false, TYPALIGN_INT));
}

/*
 * The claim.  An upload of a staged archive object comes without its data
 * (_archive_calls): it is read here, as a TOAST pointer that call_from_row
 * detoasts straight into the call, instead of being copied through every
 * plpgsql function and row it would pass.
 */
#define CLAIM_SQL \
	"SELECT c.item_id, c.kind, c.target, c.method, c.path, c.body, " \
	"       COALESCE(c.data, g.content), c.headers, c.form " \
	"  FROM qes_sign._claim($1, $2) c LEFT JOIN qes_sign.archive_staging g " \
	"    ON c.data IS NULL AND c.method OPERATOR(pg_catalog.=) 'PUT' " \
	"   AND g.request_id OPERATOR(pg_catalog.=) c.request_id " \
	"   AND g.kind OPERATOR(pg_catalog.=) pg_catalog.split_part(c.kind, ':', 2)"

/*
 * claim takes up to n due work items and turns them into calls (in the
 * worker's calls context, so they outlive the transaction).
 */
static int
claim(WorkerState *st, int n, dlist_head *claimed)
{
	Oid			types[2] = {INT4OID, TEXTARRAYOID};
	Datum		values[2] = {Int32GetDatum(n), ready_targets()};
	SPIPlanPtr	plan = qes_keep_plan(&claim_plan, CLAIM_SQL, 2, types);
	uint64		rows;

	if (SPI_execute_plan(plan, values, NULL, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "qes_sign._claim failed");
	rows = SPI_processed;
	for (uint64 i = 0; i < rows; i++)
		dlist_push_tail(claimed, &call_from_row(st, SPI_tuptable->vals[i],
												SPI_tuptable->tupdesc)->node);
	return (int) rows;
}

/*
 * next_claim_in asks when the next work item falls due (at most a tick).
 */
static long
next_claim_in(void)
{
	Oid			types[1] = {TEXTARRAYOID};
	Datum		values[1] = {ready_targets()};
	bool		isnull;
	Datum		ms;

	if (SPI_execute_plan(qes_keep_plan(&next_due_plan, "SELECT qes_sign._next_due($1)", 1, types),
						 values, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "qes_sign._next_due failed");
	ms = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
	if (isnull)
		return QES_TICK_MS;
	/* items due but locked by someone else must not make the worker spin */
	return (long) Max(Min(DatumGetFloat8(ms) + 1, (double) QES_TICK_MS), 10.0);
}

static int
list_length_dl(dlist_head *h)
{
	dlist_iter	it;
	int			n = 0;

	dlist_foreach(it, h)
		n++;
	return n;
}

/*
 * start sends the claimed calls with the current token; one that cannot be
 * started is recorded as a transport failure in the next step.
 */
static void
start(WorkerState *st, dlist_head *calls)
{
	dlist_mutable_iter it;
	int			gen;
	const char *token = qes_skribble_token(&gen);

	dlist_foreach_modify(it, calls)
	{
		QesCall    *call = dlist_container(QesCall, node, it.cur);

		dlist_delete(it.cur);
		call->token_gen = gen;
		if (!qes_http_start(call, call->bearer ? call->bearer : token))
			dlist_push_tail(&st->unsent, &call->node);
	}
}

/*
 * step records the finished calls, runs the timer and claims new work, all
 * in one short transaction, then sends what it claimed.
 */
static void
step(WorkerState *st, dlist_head *done)
{
	TimestampTz now = GetCurrentTimestamp();
	bool		tick = now >= st->next_tick;
	int			room = qes_max_concurrency - qes_http_in_flight() -
		list_length_dl(&st->waiting);
	bool		want = room > 0 &&
		(st->claim_now || now >= st->next_claim || !dlist_is_empty(done));
	dlist_head	claimed;
	dlist_mutable_iter it;

	dlist_init(&claimed);
	if (dlist_is_empty(done) && !tick && !want && !st->reloaded)
		return;
	if (!PostmasterIsAlive())
		proc_exit(1);			/* no new call for a server that is gone */
	begin_xact();
	if (st->reloaded)
	{
		SPI_execute("SELECT qes_sign._config_reloaded()", false, 0);
		st->reloaded = false;
		want = room > 0;
	}
	record_same(done);
	dlist_foreach_modify(it, done)
	{
		QesCall    *call = dlist_container(QesCall, node, it.cur);

		dlist_delete(it.cur);
		record_one(call);
		qes_call_free(call);
	}
	if (tick)
	{
		SPI_execute("SELECT qes_sign._tick()", false, 0);
		st->next_tick = TimestampTzPlusMilliseconds(now, QES_TICK_MS);
	}
	if (want)
	{
		st->claim_now = false;
		if (claim(st, room, &claimed) < room)
			st->next_claim = TimestampTzPlusMilliseconds(now, next_claim_in());
		else
			st->next_claim = now;	/* more may be due */
	}
	end_xact();
	start(st, &claimed);
}

/*
 * sort_answers takes the login's answer and sets aside calls refused for
 * their token (resent once, after a new login); the rest stay in *done.
 */
static void
sort_answers(WorkerState *st, dlist_head *done)
{
	dlist_mutable_iter it;

	dlist_foreach_modify(it, done)
	{
		QesCall    *call = dlist_container(QesCall, node, it.cur);

		if (call == st->login)
		{
			dlist_delete(it.cur);
			if (qes_skribble_take_login(call))
			{
				/* at most one login a second, whatever the tokens say */
				st->login_failures = 0;
				st->next_login = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), 1000);
			}
			else
				st->next_login = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
															 Min(60000, 1000 << Min(st->login_failures++, 6)));
			qes_call_free(call);
			st->login = NULL;
		}
		else if (!call->auth_retried && strcmp(call->service, "skribble") == 0 &&
				 qes_skribble_auth_failed(call))
		{
			dlist_delete(it.cur);
			qes_skribble_forget_token(call->token_gen);
			call->auth_retried = true;
			dlist_push_tail(&st->waiting, &call->node);
		}
	}
	dlist_foreach_modify(it, &st->unsent)
	{
		dlist_delete(it.cur);
		dlist_push_tail(done, it.cur);
	}
}

/*
 * ensure_token logs in when there is no valid token, and resends the calls
 * that were waiting for one.
 */
static void
ensure_token(WorkerState *st)
{
	if (qes_skribble_have_token())
	{
		if (!dlist_is_empty(&st->waiting))
			start(st, &st->waiting);
		return;
	}
	if (st->login || !qes_skribble_configured() || GetCurrentTimestamp() < st->next_login)
		return;
	st->login = qes_skribble_login_call(st->calls_cxt);
	if (!qes_http_start(st->login, NULL))
	{
		qes_call_free(st->login);
		st->login = NULL;
		st->next_login = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), 1000);
	}
}

/*
 * wait_for_work sleeps until something happens: answers come in, the latch
 * is set (a commit queued work), or a timer runs out.
 */
static void
wait_for_work(WorkerState *st, dlist_head *done)
{
	if (qes_http_in_flight() > 0)
	{
		qes_http_wait(QES_BUSY_POLL_MS, done);
		/* libcurl's poll does not watch the postmaster: an orphan must not
		 * go on calling out and recording into a dead server's copy */
		if (!PostmasterIsAlive())
			proc_exit(1);
		if (MyLatch->is_set)
		{
			ResetLatch(MyLatch);
			st->claim_now = true;
		}
	}
	else
	{
		/* a login due wakes the worker too (Skribble's work waits for it) */
		TimestampTz until = Min(st->next_tick, st->next_claim);
		long		ms;
		int			rc;

		if (!qes_skribble_have_token() && qes_skribble_configured())
			until = Min(until, st->next_login);
		ms = TimestampDifferenceMilliseconds(GetCurrentTimestamp(), until);
		rc = WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
					   Max(ms, 1), PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		if (rc & WL_LATCH_SET)
			st->claim_now = true;
	}
	CHECK_FOR_INTERRUPTS();
	if (ConfigReloadPending)
	{
		ConfigReloadPending = false;
		ProcessConfigFile(PGC_SIGHUP);
		qes_http_configure();
		st->reloaded = true;	/* a fixed key may cure failed work: retry now */
	}
}

/*
 * standby_or_detached is true while the worker has nothing to do here:
 * the server is a hot standby, or the extension is not installed yet.
 */
static bool
standby_or_detached(WorkerState *st)
{
	if (RecoveryInProgress())
	{
		report("standby: waiting for promotion");
		st->attached = false;
		st->was_standby = true;
		return true;
	}
	if (!st->attached)
	{
		st->attached = attach(st->was_standby);
		st->was_standby = false;
		if (!st->attached)
		{
			report("waiting for CREATE EXTENSION qes_sign or ALTER EXTENSION qes_sign UPDATE");
			return true;
		}
		st->claim_now = true;
	}
	return false;
}

/*
 * qes_worker_main is the worker's entry point.
 */
void
qes_worker_main(Datum arg)
{
	WorkerState st = {0};
	char		activity[64];

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();
	BackgroundWorkerInitializeConnection(MyBgworkerEntry->bgw_extra, NULL, 0);
	pgstat_report_appname("qes_sign worker");
	qes_worker_attach_slot();

	st.calls_cxt = AllocSetContextCreate(TopMemoryContext, "qes_sign calls",
										 ALLOCSET_DEFAULT_SIZES);
	loop_cxt = AllocSetContextCreate(TopMemoryContext, "qes_sign worker loop",
									 ALLOCSET_DEFAULT_SIZES);
	dlist_init(&st.waiting);
	dlist_init(&st.unsent);
	qes_http_init();
	on_proc_exit(qes_http_shutdown, (Datum) 0);
	ereport(LOG, (errmsg("qes_sign worker started for database \"%s\"",
						 MyBgworkerEntry->bgw_extra)));

	for (;;)
	{
		dlist_head	done;

		MemoryContextSwitchTo(loop_cxt);
		MemoryContextReset(loop_cxt);
		dlist_init(&done);
		wait_for_work(&st, &done);
		if (standby_or_detached(&st))
		{
			st.next_claim = st.next_tick =
				TimestampTzPlusMilliseconds(GetCurrentTimestamp(), QES_TICK_MS);
			continue;
		}
		sort_answers(&st, &done);
		ensure_token(&st);
		step(&st, &done);
		qes_set_in_flight(qes_http_in_flight());
		snprintf(activity, sizeof(activity), "%d calls in flight",
				 qes_http_in_flight());
		report(qes_http_in_flight() ? activity : "waiting for work");
	}
}
