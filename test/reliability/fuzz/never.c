/*
 * never.c: the server functions src/callbacks.c, src/webhook.c and
 * src/crypto.c reference but the fuzzed paths never reach (SPI, tuples,
 * waking the worker).  Compiled without PostgreSQL's headers, so their
 * signatures do not matter: each one aborts, which libFuzzer reports.
 */
#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>

#define NEVER(name) void name(void); void name(void) { fprintf(stderr, #name " called\n"); abort(); }
NEVER(qes_keep_plan)
NEVER(SPI_connect)
NEVER(SPI_finish)
NEVER(SPI_execute_plan)
NEVER(heap_form_tuple)
NEVER(BlessTupleDesc)
NEVER(get_call_result_type)
NEVER(qes_wake_at_commit)
NEVER(pg_detoast_datum_packed)
NEVER(HeapTupleHeaderGetDatum)
NEVER(SPI_getbinval)
uint64_t	SPI_processed;
void	   *SPI_tuptable;
