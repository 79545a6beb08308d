# Makefile for qes_sign (PGXS)

MODULE_big = qes_sign
OBJS = \
	src/qes_sign.o \
	src/crypto.o \
	src/shmem.o \
	src/status_machine.o \
	src/audit.o \
	src/callbacks.o \
	src/webhook.o \
	src/http.o \
	src/skribble.o \
	src/worker.o \
	src/s3.o \
	src/yousign.o

EXTENSION = qes_sign
# 1.0 is released as it is; 1.0--1.1 is built from its sources, the
# providers' files among them (sql/install/README.md)
DATA = sql/qes_sign--1.0.sql
DATA_built = sql/qes_sign--1.0--1.1.sql
UPGRADE_1_1 = sql/install/1.1-core.sql sql/install/provider-skribble.sql \
	sql/install/provider-yousign.sql sql/install/1.1-end.sql
PGFILEDESC = "qes_sign - qualified electronic signature workflows"

# pg_regress suites (sql/*.sql, expected/*.out), in order
REGRESS = install status_machine create_request actions apply_state \
	audit callbacks webhooks security worker_rules archive trust_boundary skribble_rules \
	yousign_rules
# isolation specs (specs/*.spec, expected/*.out)
ISOLATION = concurrent_completion concurrent_audit notifications
# make installcheck: against the server at PGHOST/PGPORT, which must load
# qes_sign with the settings of test/qes_sign.conf (include it); with
# TEMP_INSTANCE=1 each suite starts a temporary server of its own, as
# test/run-all.sh does.  Both run the TAP suites too (as a user other than root).
REGRESS_OPTS = --temp-config=$(srcdir)/test/qes_sign.conf
ISOLATION_OPTS = --temp-config=$(srcdir)/test/qes_sign.conf --inputdir=$(srcdir)/test/isolation
ifdef TEMP_INSTANCE
REGRESS_OPTS += --temp-instance=./tmp_check_regress
ISOLATION_OPTS += --temp-instance=./tmp_check_iso
endif
TAP_TESTS = 1
PROVE_TESTS = test/t/*.pl
PROVE_FLAGS = -I $(srcdir)/test/perl

PG_CPPFLAGS = -Wall -Wextra -Werror -Wno-unused-parameter -Wno-missing-field-initializers -Wno-sign-compare -I$(srcdir)/src
SHLIB_LINK = -lcrypto -lcurl

PG_CONFIG ?= pg_config
PGXS := $(shell $(PG_CONFIG) --pgxs)
include $(PGXS)

# used by test/run-all.sh, which runs the suites as an unprivileged user
print-%:
	@echo '$($*)'

sql/qes_sign--1.0--1.1.sql: $(UPGRADE_1_1)
	cat $^ > $@

# every object depends on the shared headers (PGXS does not track them)
$(OBJS): src/qes_sign.h src/http.h

# the reliability suites at full scale, then the libFuzzer harness for 60 s
# (test/reliability/README.md); run as root, like test/run-all.sh
reliability: install
	QES_SCALE=full bash $(srcdir)/test/reliability/run.sh
	QES_SCALE=full bash $(srcdir)/test/reliability/fuzz/run.sh
.PHONY: reliability
