# qes_sign behind PgBouncer in transaction mode (Debian's pgbouncer, 1.18):
# two clients interleave their transactions on ONE server connection and
# each sees only the tenant it selected with SET LOCAL in that transaction;
# a transaction without SET LOCAL sees nothing and may not create; a
# session-level SET (without LOCAL) does leak to the next client, which is
# why the portal must use SET LOCAL; with a pool per role, a role selecting
# a tenant it does not hold sees no rows and gets 42501 from the functions.
#
# PgBouncer keeps one pool per (database, user).  Two clients share a server
# connection only when the [databases] entry fixes the server's user: the
# alias "shared" logs in as hv_portal (one portal login holding both
# tenants, as README "Using it" has it), whatever user the client names.
# The alias "own" logs in as the client's own role (a pool per role).
use strict;
use warnings;
use FindBin;
use lib "$FindBin::RealBin/../perl";
use QesTest;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use IPC::Run;

my $pgbouncer = '/usr/sbin/pgbouncer';
die "$pgbouncer not found: test/setup.sh installs the Debian package pgbouncer\n" unless -x $pgbouncer;

my $d    = start_double();
my $node = qes_node('pooled', double => $d, relay => 0);

sub one { my ($sql) = @_; return $node->safe_psql('postgres', $sql); }

my $pdf = unpack('H*', test_pdf());
my $signer = q{'[{"first_name": "Anna", "last_name": "Becker", "email": "anna.becker@example.org"}]'::jsonb};

# create_for(verwaltung, n): n requests of that tenant, created as superuser; their ids
sub create_for
{
	my ($tenant, $n) = @_;
	return split /\n/, one(qq{SELECT qes_sign.create_request('$tenant', 'Mietvertrag ' || g,
		'\\x$pdf'::bytea, $signer) FROM generate_series(1, $n) g ORDER BY g});
}

one(q{CREATE ROLE hv_portal LOGIN IN ROLE qes_sign_app;
	CREATE ROLE portal_a LOGIN IN ROLE qes_sign_app;
	CREATE ROLE portal_b LOGIN IN ROLE qes_sign_app;
	SELECT qes_sign.grant_tenant('portal_a', 'hv-a'), qes_sign.grant_tenant('portal_b', 'hv-b'),
	       qes_sign.grant_tenant('hv_portal', 'hv-a'), qes_sign.grant_tenant('hv_portal', 'hv-b');});
my @a_ids = create_for('hv-a', 2);
my @b_ids = create_for('hv-b', 3);

# ---- PgBouncer: transaction mode, one server connection per pool
my $dir   = PostgreSQL::Test::Utils::tempdir_short();
my $bport = PostgreSQL::Test::Cluster::get_free_port();
my ($pghost, $pgport) = ($node->host, $node->port);
PostgreSQL::Test::Utils::append_to_file("$dir/userlist.txt",
	join('', map { qq{"$_" ""\n} } qw(portal_a portal_b pgb_admin)));
PostgreSQL::Test::Utils::append_to_file("$dir/pgbouncer.ini", <<"EOF");
[databases]
shared = host=$pghost port=$pgport dbname=postgres user=hv_portal pool_size=1
own = host=$pghost port=$pgport dbname=postgres pool_size=1

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $bport
unix_socket_dir = $dir
auth_type = trust
auth_file = $dir/userlist.txt
admin_users = pgb_admin
pool_mode = transaction
default_pool_size = 1
max_client_conn = 20
; the default; PgBouncer does not run it in transaction mode (only with
; server_reset_query_always = 1), so a session-level SET stays on the server
server_reset_query = DISCARD ALL
; its log goes to stderr: tmp_check/log/012_pgbouncer_pgbouncer.log
pidfile = $dir/pgbouncer.pid
EOF
my $bouncer = start_service('pgbouncer', {}, $pgbouncer, "$dir/pgbouncer.ini");
wait_for_port($bouncer, $bport) or die "pgbouncer does not listen on $bport";

sub via { my ($db, $user) = @_; return "host=127.0.0.1 port=$bport dbname=$db user=$user"; }

# admin(command): rows of PgBouncer's admin console as hashes by column name
sub admin
{
	my ($cmd) = @_;
	my ($out, $err) = ('', '');
	IPC::Run::run([ 'psql', '-XAq', '-F', '|', '-P', 'footer=off', '-d', via('pgbouncer', 'pgb_admin'), '-c', $cmd ],
		'<', \undef, '>', \$out, '2>', \$err)
	  or die "$cmd on the admin console: $err";
	my ($head, @rows) = split /\n/, $out;
	my @cols = split /\|/, $head;
	return map { my @v = split /\|/, $_, -1; my %r; @r{@cols} = @v; \%r } @rows;
}

# tenants(session): the tenants visible in overview, "hv-a:2,hv-b:3", with
# the count of signatur_anfragen rows and the setting: "<setting>|<overview>|<rows>"
my $seen = q{SELECT coalesce(current_setting('qes_sign.verwaltung', true), '')
	|| '|' || coalesce((SELECT string_agg(verwaltung || ':' || n, ',' ORDER BY verwaltung)
	                      FROM (SELECT verwaltung, count(*) n FROM qes_sign.overview GROUP BY 1) x), '')
	|| '|' || (SELECT count(*) FROM qes_sign.signatur_anfragen)
	|| '|' || pg_backend_pid()};

# txn(session, tenant, sql): BEGIN; SET LOCAL the tenant (unless undef); sql; COMMIT
sub txn
{
	my ($s, $tenant, $sql) = @_;
	my $set = defined $tenant ? "SET LOCAL qes_sign.verwaltung = '$tenant';" : '';
	return session_query($s, "BEGIN; $set $sql; COMMIT;");
}

my $ca = psql_session(via('shared', 'portal_a'));
my $cb = psql_session(via('shared', 'portal_b'));
my $server_pid;

scenario 'two clients share one server connection (transaction mode, pool_size 1)' => sub {
	my $pa = session_query($ca, 'SELECT pg_backend_pid()');
	my $pb = session_query($cb, 'SELECT pg_backend_pid()');
	like($pa, qr/^\d+$/, "client A runs on backend $pa");
	is($pb, $pa, 'client B runs on the same backend');
	$server_pid = $pa;
	is(session_query($ca, 'SELECT current_user'), 'hv_portal', 'A acts as the pool\'s role hv_portal');
	is(session_query($cb, 'SELECT current_user'), 'hv_portal', 'B acts as hv_portal too');
	my @servers = grep { $_->{database} eq 'shared' } admin('SHOW SERVERS');
	is(scalar @servers, 1, 'SHOW SERVERS: one server connection for the two clients');
	is($servers[0]{remote_pid}, $pa, 'SHOW SERVERS: it is that backend');
	my @clients = grep { $_->{database} eq 'shared' } admin('SHOW CLIENTS');
	is(join(',', sort map { $_->{user} } @clients), 'portal_a,portal_b', 'SHOW CLIENTS: portal_a and portal_b');
	is(one("SELECT count(*) FROM pg_stat_activity WHERE usename = 'hv_portal'"), '1',
		'pg_stat_activity: one session of hv_portal');
};

scenario 'SET LOCAL per transaction: each transaction sees its own tenant, one without sees nothing' => sub {
	is(txn($ca, 'hv-a', $seen), "hv-a|hv-a:2|2|$server_pid", 'A (SET LOCAL hv-a): only hv-a\'s 2 requests');
	is(txn($cb, undef, $seen), "||0|$server_pid",
		'B next on the same backend, without SET LOCAL: no setting, no rows');
	is(txn($cb, 'hv-b', $seen), "hv-b|hv-b:3|3|$server_pid", 'B (SET LOCAL hv-b): only hv-b\'s 3 requests');
	is(session_query($ca, $seen), "||0|$server_pid", 'A without a transaction block or SET LOCAL: nothing');
	is(txn($ca, 'hv-a', $seen), "hv-a|hv-a:2|2|$server_pid", 'A (hv-a) again: hv-a only');
	is(txn($cb, 'hv-b', $seen), "hv-b|hv-b:3|3|$server_pid", 'B (hv-b) again: hv-b only');
	is(session_query($cb, "BEGIN; SELECT set_config('qes_sign.verwaltung', 'hv-b', true) IS NOT NULL; $seen; COMMIT;"),
		"t\nhv-b|hv-b:3|3|$server_pid", "set_config(..., true) works like SET LOCAL");
	is(session_query($ca, $seen), "||0|$server_pid", 'after it: nothing');
	is(txn($ca, 'hv-a', "SELECT count(*) FROM qes_sign.signers"), '2', 'A (hv-a): the signers of its 2 requests');
	is(txn($ca, 'hv-a', "SELECT count(*) FROM qes_sign.timeline('$b_ids[0]')"), '0',
		'A (hv-a): no timeline of an hv-b request');
};

scenario 'while A\'s transaction holds the server connection, B waits; then runs there with no tenant' => sub {
	is(session_query($ca, "BEGIN; SET LOCAL qes_sign.verwaltung = 'hv-a'; SELECT 1"), '1',
		'A: BEGIN, SET LOCAL hv-a (the transaction stays open)');
	session_send($cb, $seen);
	my ($pool, $deadline) = (undef, time + 10);
	while (time < $deadline)
	{
		($pool) = grep { $_->{database} eq 'shared' } admin('SHOW POOLS');
		last if $pool->{cl_waiting} == 1;
		select(undef, undef, undef, 0.05);
	}
	is("$pool->{cl_active}/$pool->{cl_waiting}/$pool->{sv_active}", '1/1/1',
		'SHOW POOLS: one client active, one waiting, one server connection active');
	ok(!session_done($cb), 'B\'s statement has not run');
	is(session_query($ca, $seen), "hv-a|hv-a:2|2|$server_pid", 'A, still in its transaction: hv-a');
	session_query($ca, 'COMMIT');
	is(session_wait($cb), "||0|$server_pid", 'after A\'s COMMIT, B ran on the same backend: no tenant, no rows');
};

scenario 'create_request through the pooler: SET LOCAL and the call in one transaction' => sub {
	my ($id, $err) = txn($ca, 'hv-a',
		"SELECT qes_sign.create_request('hv-a', 'Gepoolt', '\\x$pdf'::bytea, $signer)");
	like($id, qr/^[0-9a-f-]{36}$/, "created $id") or diag($err);
	is(one("SELECT verwaltung || ' ' || status FROM qes_sign.signatur_anfragen WHERE id = '$id'"), 'hv-a offen',
		'stored for hv-a, offen');
	is(one("SELECT actor FROM qes_sign.audit_log WHERE request_id = '$id' AND event = 'created'"), 'hv_portal',
		'audit: created by hv_portal');
	is(txn($cb, 'hv-b', "SELECT count(*) FROM qes_sign.signatur_anfragen WHERE id = '$id'"), '0',
		'B (hv-b) does not see it');
	is(txn($ca, 'hv-a', "SELECT title FROM qes_sign.overview WHERE id = '$id'"), 'Gepoolt', 'A (hv-a) sees it');
	push @a_ids, $id;

	my ($out, $e2) = session_query($cb, "SELECT qes_sign.create_request('hv-b', 'Ohne Mandant', '\\x$pdf'::bytea, $signer)");
	is(sqlstate($e2), '42501', 'B without SET LOCAL, right after A\'s transaction: 42501');
	like($e2, qr/qes_sign\.verwaltung is not set/, '... qes_sign.verwaltung is not set');
	($out, $e2) = session_query($cb, "BEGIN; SET LOCAL qes_sign.verwaltung = 'hv-b';
		SELECT qes_sign.create_request('hv-a', 'Falscher Mandant', '\\x$pdf'::bytea, $signer); ROLLBACK;");
	is(sqlstate($e2), '42501', 'B (hv-b) creating for hv-a: 42501');
	is(one("SELECT count(*) FROM qes_sign.signatur_anfragen WHERE title IN ('Ohne Mandant', 'Falscher Mandant')"), '0',
		'neither was stored');
	is(session_query($ca, 'SELECT pg_backend_pid()'), $server_pid, 'still the one server connection');
};

scenario 'a session-level SET (without LOCAL) leaks to the next client of the server connection' => sub {
	# PgBouncer 1.18 in transaction mode restores only the startup parameters
	# it tracks (client_encoding, DateStyle, TimeZone, standard_conforming_strings,
	# application_name) and runs no server_reset_query between clients: a
	# plain SET stays on the backend for whoever uses it next
	my ($out, $err) = session_query($ca, "SET qes_sign.verwaltung = 'hv-a'");
	is($err, '', 'A: SET qes_sign.verwaltung = hv-a (session level) is accepted');
	is(txn($cb, undef, $seen), "hv-a|hv-a:3|3|$server_pid", 'B, without SET LOCAL, sees hv-a\'s 3 requests: the leak');
	is(txn($cb, 'hv-b', $seen), "hv-b|hv-b:3|3|$server_pid", 'B with SET LOCAL hv-b: its own tenant');
	is(session_query($cb, $seen), "hv-a|hv-a:3|3|$server_pid",
		'after COMMIT the leaked session value is back (SET LOCAL only covers its own transaction)');
	($out, $err) = session_query($cb, "SELECT qes_sign.create_request('hv-a', 'Geleakt', '\\x$pdf'::bytea, $signer)");
	like($out, qr/^[0-9a-f-]{36}$/, 'B, without SET LOCAL, could even create for hv-a');
	push @a_ids, $out;
	session_query($ca, 'RESET qes_sign.verwaltung');
	is(session_query($cb, $seen), "||0|$server_pid", 'once A resets it, B sees nothing again');
};

scenario 'a pool per role: selecting a tenant the role does not hold' => sub {
	my $oa = psql_session(via('own', 'portal_a'));
	my $ob = psql_session(via('own', 'portal_b'));
	is(session_query($oa, 'SELECT current_user'), 'portal_a', 'pool "own": A acts as portal_a');
	is(session_query($ob, 'SELECT current_user'), 'portal_b', 'pool "own": B acts as portal_b');
	isnt(session_query($oa, 'SELECT pg_backend_pid()'), session_query($ob, 'SELECT pg_backend_pid()'),
		'PgBouncer gives each user its own server connection');
	is(join(',', sort map { $_->{user} } grep { $_->{database} eq 'own' } admin('SHOW SERVERS')),
		'portal_a,portal_b', 'SHOW SERVERS: one connection per role');

	my ($out, $err) = txn($oa, 'hv-b', $seen);
	like($out, qr/^hv-b\|\|0\|\d+$/, 'portal_a: SET LOCAL hv-b is accepted, but no overview row and no request');
	is($err, '', '... and no error');
	($out, $err) = session_query($oa, "BEGIN; SET LOCAL qes_sign.verwaltung = 'hv-b';
		SELECT qes_sign.create_request('hv-b', 'Fremd', '\\x$pdf'::bytea, $signer); ROLLBACK;");
	is(sqlstate($err), '42501', 'portal_a creating for hv-b: 42501');
	like($err, qr/role "portal_a" may not act for verwaltung "hv-b"/, '... may not act for verwaltung "hv-b"');
	($out, $err) = session_query($oa, "BEGIN; SET LOCAL qes_sign.verwaltung = 'hv-b';
		SELECT qes_sign.remind('$b_ids[0]'); ROLLBACK;");
	is(sqlstate($err), '42501', 'portal_a reminding an hv-b request: 42501');
	($out, $err) = txn($oa, 'hv-a', "SELECT qes_sign.withdraw('$b_ids[0]', 'probe')");
	is(sqlstate($err), 'P0002', 'portal_a (hv-a) withdrawing an hv-b request: P0002, as for an unknown id');
	like($err, qr/signature request $b_ids[0] does not exist/, '... "does not exist"');
	is(one("SELECT count(*) FROM qes_sign.work_items WHERE request_id = '$b_ids[0]' AND kind IN ('remind', 'withdraw')"),
		'0', 'nothing was queued for the hv-b request');
	like(txn($oa, 'hv-a', $seen), qr/^hv-a\|hv-a:4\|4\|\d+$/, 'portal_a with its own tenant: hv-a\'s 4 requests');
	like(txn($ob, 'hv-b', $seen), qr/^hv-b\|hv-b:3\|3\|\d+$/, 'portal_b with its own: hv-b\'s 3');

	# in the shared pool both clients are hv_portal, which holds both
	# tenants: there the boundary between the clients is the pool's role
	is(txn($ca, 'hv-b', $seen), "hv-b|hv-b:3|3|$server_pid",
		'pool "shared": client portal_a may select hv-b, since the server role hv_portal holds it');
	session_quit($_) for $oa, $ob;
};

session_quit($_) for $ca, $cb;
stop_child($bouncer);
done_testing();
