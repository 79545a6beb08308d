# qes_sign's figures through postgres_exporter (Debian's
# prometheus-postgres-exporter 0.11.1) with
# monitoring/postgres_exporter/queries.yaml: the exporter runs as a
# monitoring role set up with exactly the statements the file's header
# gives, against a node with queued work, retries, rejected callbacks and
# webhooks, and a completed request waiting for the archive (no bucket is
# configured); every metric of the file is found on /metrics with the
# value SQL gives.  The monitoring role reads no personal data and calls no
# operator function.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::RealBin/../perl";
use QesTest;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);

my $exporter = '/usr/bin/prometheus-postgres-exporter';
die "$exporter not found: test/setup.sh installs the Debian package prometheus-postgres-exporter\n"
  unless -x $exporter;
my $queries = "$FindBin::RealBin/../../monitoring/postgres_exporter/queries.yaml";
my $t0 = time;

my $d    = start_double();
my $node = qes_node('metrics', double => $d);

sub one { my ($sql) = @_; return $node->safe_psql('postgres', $sql); }

my @kinds = qw(submit refresh remind withdraw replace_signer archive expire anchor discard);

# the monitoring role, set up with the statements of the file's header
my $header = join '', grep { /^#/ } split /^/, PostgreSQL::Test::Utils::slurp_file($queries);
my @setup = $header =~ /^#\s{3}((?:CREATE ROLE|GRANT) [^\n]*;)$/mg;
cmp_ok(scalar @setup, '>=', 5, scalar(@setup) . ' set-up statements in the header of queries.yaml');
one(join "\n", @setup);

scenario 'work to show: a completed request, retries, rejections, a held queue' => sub {
	my @done = complete_requests($d, $node, 1);
	all_status_ok($node, \@done, 'vollstaendig', 60, 'one request vollstaendig (no bucket: it stays there)');

	ctl_post($d, 'faults', { error_rate => 1, error_status => 503 });
	my @retried = create_requests($node, 1);
	ok(wait_until($node, "SELECT value >= 2 FROM qes_sign.operations WHERE metric = 'api_retries'"),
		'503s: the create is retried');
	ctl_post($d, 'faults', {});
	submitted_ok($node, \@retried, 30, 'then it goes through');

	for my $bad ("SELECT qes_sign.receive_callback('/qes/callback/forged?sig=00', 'x')",
		"SELECT qes_sign.receive_webhook('{\"webhook-id\": \"msg_1\"}', 'x')")
	{
		my ($rc, $out, $err) = $node->psql('postgres', $bad);
		like($err, qr/ERROR/, 'refused: ' . substr($bad, 7, 26));
	}

	# hold Skribble's queue (as a rate limit would): what is created now stays pending
	one("INSERT INTO qes_sign.provider_pauses (provider, until, reason) "
		  . "VALUES ('skribble', now() + interval '1 hour', 'tap: hold the queue')");
	ok(wait_until($node, "SELECT (SELECT value FROM qes_sign.operations WHERE metric = 'calls_in_flight') = 0 "
		  . "AND NOT EXISTS (SELECT FROM qes_sign.work_items WHERE state = 'pending' AND leased_until > now())"),
		'the worker is idle');
	my @held = create_requests($node, 3);
	is(ops($node)->{queue_submit}, 3, 'operations: queue_submit 3');
	# a known age: the oldest submit was created an hour ago and is due for
	# ten minutes; the completed request was completed two hours ago
	one("UPDATE qes_sign.work_items SET created_at = now() - interval '1 hour', due_at = now() - interval '10 minutes' "
		  . "WHERE request_id = '$held[0]' AND kind = 'submit' AND state = 'pending'");
	one("UPDATE qes_sign.signatur_anfragen SET completed_at = now() - interval '2 hours' WHERE id = '$done[0]'");
};

my $port = PostgreSQL::Test::Cluster::get_free_port();
my $dsn  = sprintf('host=%s port=%s user=qes_monitor dbname=postgres sslmode=disable', $node->host, $node->port);
my $svc  = start_service('exporter', { DATA_SOURCE_NAME => $dsn }, $exporter,
	"--extend.query-path=$queries", "--web.listen-address=127.0.0.1:$port",
	'--disable-default-metrics', '--disable-settings-metrics',
	'--no-collector.database', '--no-collector.bgwriter');
wait_for_port($svc, $port) or die "the exporter does not listen on $port";
my $url = "http://127.0.0.1:$port/metrics";

# value(by_name, name, label => value): the one sample of name with those labels
sub value
{
	my ($by, $name, %l) = @_;
	my @hit = grep {
		my $s = $_->[0];
		!grep { ($s->{$_} // '') ne $l{$_} } keys %l
	} @{ $by->{$name} // [] };
	return @hit == 1 ? $hit[0][1] : undef;
}

scenario 'every metric of queries.yaml on /metrics, with the value SQL gives' => sub {
	# a scrape between two equal readings of operations (a late callback
	# from the double would move a counter; the per-minute rates may decay)
	my ($ops, $raw, $by);
	for my $try (1 .. 5)
	{
		$ops = ops($node);
		($raw, $by) = prom_scrape($url);
		my $after = ops($node);
		my $key = sub { my ($o) = @_; join ',', map { "$_=$o->{$_}" } sort grep { !/_last_minute$/ } keys %$o };
		last if $key->($ops) eq $key->($after);
		note("operations moved during scrape $try");
	}
	is(value($by, 'pg_up'), 1, 'pg_up 1');
	is(value($by, 'pg_exporter_last_scrape_error'), 0, 'pg_exporter_last_scrape_error 0');
	my @load = @{ $by->{pg_exporter_user_queries_load_error} // [] };
	ok(@load && !grep({ $_->[1] != 0 } @load), 'pg_exporter_user_queries_load_error 0: the file loaded');

	# the queue by kind: every known kind, the held submits, the archive item
	for my $k (@kinds)
	{
		is(value($by, 'qes_sign_queue_depth', kind => $k), $ops->{"queue_$k"} // 0,
			"qes_sign_queue_depth{kind=\"$k\"} = " . ($ops->{"queue_$k"} // 0));
	}
	is(value($by, 'qes_sign_queue_depth', kind => 'submit'),  3, '... 3 held submits');
	is(value($by, 'qes_sign_queue_depth', kind => 'archive'), 1, '... 1 archive item waiting for a bucket');

	my %from = (
		inbox_unprocessed               => 'inbox_unprocessed',
		audit_unanchored_entries        => 'audit_unanchored_entries',
		archive_pending_before_deletion => 'archive_pending_before_deletion',
		calls_in_flight                 => 'calls_in_flight',
		api_calls_total                 => 'api_calls',
		api_retries_total               => 'api_retries',
		api_failures_total              => 'api_failures',
		logins_total                    => 'logins',
		login_failures_total            => 'login_failures',
		callbacks_accepted_total        => 'callbacks_accepted',
		callbacks_rejected_total        => 'callbacks_rejected',
		webhooks_accepted_total         => 'webhooks_accepted',
		webhooks_rejected_total         => 'webhooks_rejected');
	for my $m (sort keys %from)
	{
		is(value($by, "qes_sign_$m"), $ops->{ $from{$m} }, "qes_sign_$m = $ops->{$from{$m}}");
	}
	cmp_ok(value($by, 'qes_sign_api_calls_total'),         '>=', 4, '... api calls: login, creates, retries');
	cmp_ok(value($by, 'qes_sign_api_retries_total'),       '>=', 2, '... retries of the 503s');
	cmp_ok(value($by, 'qes_sign_callbacks_accepted_total'), '>=', 1, '... callbacks through the relay');
	cmp_ok(value($by, 'qes_sign_callbacks_rejected_total'), '>=', 1, '... the forged callback');
	cmp_ok(value($by, 'qes_sign_webhooks_rejected_total'),  '>=', 1, '... the unsigned webhook');
	cmp_ok(value($by, 'qes_sign_logins_total'),             '>=', 1, '... the login');
	cmp_ok(value($by, 'qes_sign_audit_unanchored_entries'), '>', 0,  '... audit entries, no bucket to anchor them');
	for my $m (qw(api_calls_last_minute api_retries_last_minute))
	{
		my $v = value($by, "qes_sign_$m");
		ok(defined $v && $v >= 0 && $v <= value($by, 'qes_sign_api_calls_total'), "qes_sign_$m = $v (a rate)");
	}

	my $elapsed = time - $t0 + 5;
	my $oldest  = value($by, 'qes_sign_work_oldest_pending_seconds', kind => 'submit');
	ok($oldest >= 3600 && $oldest < 3600 + $elapsed,
		"qes_sign_work_oldest_pending_seconds{kind=\"submit\"} = $oldest (the submit created an hour ago)");
	my $overdue = value($by, 'qes_sign_work_overdue_seconds', kind => 'submit');
	ok($overdue >= 600 && $overdue < 600 + $elapsed,
		"qes_sign_work_overdue_seconds{kind=\"submit\"} = $overdue (due ten minutes ago)");
	my $arch = value($by, 'qes_sign_work_oldest_pending_seconds', kind => 'archive');
	ok($arch > 0 && $arch < $elapsed, "qes_sign_work_oldest_pending_seconds{kind=\"archive\"} = $arch (since completion)");
	for my $k (grep { !$ops->{"queue_$_"} } @kinds)
	{
		is(value($by, 'qes_sign_work_oldest_pending_seconds', kind => $k) . '/'
			  . value($by, 'qes_sign_work_overdue_seconds', kind => $k), '0/0', "kind $k: nothing pending, 0/0");
	}

	is(value($by, 'qes_sign_archive_backlog_requests'),
		one("SELECT count(*) FROM qes_sign.signatur_anfragen WHERE status = 'vollstaendig'"),
		'qes_sign_archive_backlog_requests = the vollstaendig requests (1)');
	my $bl = value($by, 'qes_sign_archive_backlog_oldest_seconds');
	ok($bl >= 7200 && $bl < 7200 + $elapsed, "qes_sign_archive_backlog_oldest_seconds = $bl (completed two hours ago)");

	my @ours = grep { /^qes_sign_/ } keys %$by;
	is(scalar @ours, 20, '20 metric names of qes_sign: ' . join(' ', sort @ours));
	is(scalar(grep { /^qes_sign_/ } keys %$raw), 15 + 3 * @kinds + 2, 'and ' . (15 + 3 * @kinds + 2) . ' series');
};

scenario 'the next scrape follows: a rejection counted, the queue drained' => sub {
	my (undef, $by) = prom_scrape($url);
	my $before = value($by, 'qes_sign_callbacks_rejected_total');
	$node->psql('postgres', "SELECT qes_sign.receive_callback('/qes/callback/forged?sig=01', 'x')");
	(undef, $by) = prom_scrape($url);
	is(value($by, 'qes_sign_callbacks_rejected_total'), $before + 1, 'callbacks_rejected_total + 1');

	one("DELETE FROM qes_sign.provider_pauses WHERE provider = 'skribble'");
	one('SELECT qes_sign.wake()');
	ok(wait_until($node, "SELECT count(*) FROM qes_sign.work_items WHERE kind = 'submit' AND state = 'pending'", '0'),
		'the pause lifted, the held submits go out');
	(undef, $by) = prom_scrape($url);
	is(value($by, 'qes_sign_queue_depth', kind => 'submit'), 0, 'qes_sign_queue_depth{kind="submit"} 0');
	is(value($by, 'qes_sign_work_oldest_pending_seconds', kind => 'submit'), 0,
		'qes_sign_work_oldest_pending_seconds{kind="submit"} 0');
	is(value($by, 'qes_sign_queue_depth', kind => 'archive'), 1, 'the archive item still waits for a bucket');
};

scenario 'the monitoring role reads figures, not data' => sub {
	my %refused = (
		'SELECT title FROM qes_sign.signatur_anfragen'           => 'titles',
		'SELECT verwaltung FROM qes_sign.signatur_anfragen'      => 'tenants',
		'SELECT email FROM qes_sign.signers'                     => 'signers',
		'SELECT payload FROM qes_sign.work_items'                => 'work item payloads',
		'SELECT last_error FROM qes_sign.work_items'             => 'error texts',
		'SELECT * FROM qes_sign.overview'                        => 'the portal view',
		'SELECT * FROM qes_sign.request_errors'                  => 'request_errors',
		'SELECT * FROM qes_sign.audit_log'                       => 'the audit trail',
		"SELECT qes_sign.grant_tenant('qes_monitor', 'hv-test')" => 'grant_tenant');
	for my $sql (sort keys %refused)
	{
		my ($rc, $out, $err) = $node->psql('postgres', $sql, extra_params => [ '-U', 'qes_monitor' ]);
		like($err, qr/permission denied/, "qes_monitor: $refused{$sql} refused");
	}
	is($node->safe_psql('postgres', 'SELECT count(*) > 0 FROM qes_sign.operations', extra_params => [ '-U', 'qes_monitor' ]),
		't', 'qes_monitor reads operations');

	# why BYPASSRLS: the same grants without it count no request, silently
	my @norls = map { s/\bqes_monitor\b/qes_monitor_norls/gr =~ s/ BYPASSRLS//r } @setup;
	one(join "\n", @norls);
	my $backlog = "SELECT count(*) FROM qes_sign.signatur_anfragen WHERE status = 'vollstaendig'";
	is($node->safe_psql('postgres', $backlog, extra_params => [ '-U', 'qes_monitor_norls' ]), '0',
		'without BYPASSRLS the archive backlog reads 0, with no error');
	is($node->safe_psql('postgres', $backlog, extra_params => [ '-U', 'qes_monitor' ]), '1',
		'with it: 1');
	my $log = PostgreSQL::Test::Utils::slurp_file($svc->{log});
	unlike($log, qr/level=error/, 'no error in the exporter\'s log') or diag($log);
};

stop_child($svc);
done_testing();
