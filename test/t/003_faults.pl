# Faults: 200 requests through 20 % injected 5xx, 429s and timeouts; kill -9
# of the worker during a 200-request run; a fast shutdown while 50 calls hang.
# Every request completes, none is created twice at Skribble.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::RealBin/../perl";
use QesTest;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);

my $d = start_double();
my $node = qes_node('faults', double => $d, conf => { 'qes_sign.reconcile_interval' => "'5s'" });

sub count_submitted
{
	my ($ids) = @_;
	return $node->safe_psql('postgres', "SELECT count(*) FROM qes_sign.signatur_anfragen WHERE id IN ("
		  . join(', ', map { "'$_'" } @$ids) . ') AND provider_id IS NOT NULL');
}

scenario '200 requests through 20 % 5xx, 429s and timeouts' => sub {
	ctl_post($d, 'faults', { error_rate => 0.2, error_status => 503, rate_limit_rate => 0.05, retry_after => 1,
			timeout_rate => 0.02, timeout_ms => 3000, seed => 7 });
	my $t0 = time;
	my @f = create_requests($node, 200);
	submitted_ok($node, \@f, 120, '200 requests submitted through faults');
	is(sign_all($d, $node, \@f), 0, 'all 400 signers signed');
	all_status_ok($node, \@f, 'vollstaendig', 120, 'all 200 vollstaendig through faults');
	note(sprintf('fault run: %.1f s', time - $t0));
	my $st = double_stats($d);
	cmp_ok($st->{faults_injected}{$_}, '>', 0, "faults injected: $_ ($st->{faults_injected}{$_})")
	  for qw(error rate_limit timeout);
	creates_once_ok($d, \@f, 'none of the 200 created twice');
	cmp_ok(ops($node)->{api_retries}, '>', 0, 'operations: api_retries counted');
	ctl_post($d, 'faults', {});
};

scenario 'kill -9 of the worker during a 200-request run' => sub {
	ctl_post($d, 'latency', { ms => 20 });    # keep calls in flight when the kill lands
	my @k = create_requests($node, 200);
	ok(wait_until($node, "SELECT count(*) >= 20 FROM qes_sign.signatur_anfragen WHERE provider_id IS NOT NULL "
		  . "AND id IN (" . join(', ', map { "'$_'" } @k) . ')', 't', 60), 'the run is under way');
	my $pid = worker_pid($node);
	ok($pid, "worker pid $pid");
	my $before = count_submitted(\@k);
	kill 'KILL', $pid;
	note("killed the worker with $before of 200 submitted");
	ok(wait_until($node, "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'qes_sign worker' "
		  . "AND pid <> $pid", '1', 60), 'worker restarted after kill -9');
	submitted_ok($node, \@k, 120, 'all 200 submitted after the kill');
	is(sign_all($d, $node, \@k), 0, 'all 400 signers signed');
	$pid = worker_pid($node);
	kill 'KILL', $pid;    # a second kill while the callbacks are processed
	ok(wait_until($node, "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'qes_sign worker' "
		  . "AND pid <> $pid", '1', 60), 'worker restarted after the second kill -9');
	all_status_ok($node, \@k, 'vollstaendig', 120, 'all 200 vollstaendig despite two kills');
	creates_once_ok($d, \@k, 'none of the 200 created twice despite the kills');
	is($node->safe_psql('postgres', 'SELECT ok FROM qes_sign.verify_audit_chain()'), 't', 'audit chain intact');
	ctl_post($d, 'latency', { ms => 0 });
};

scenario 'pg_terminate_backend: the worker stops and comes back after worker_restart_delay' => sub {
	my $pid = worker_pid($node);
	my $t0  = time;
	is($node->safe_psql('postgres', "SELECT pg_terminate_backend($pid, 5000)"), 't', 'the worker ended within 5 s');
	ok(wait_until($node, "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'qes_sign worker' "
		  . "AND pid <> $pid", '1', 20), sprintf('a new worker after %.1f s', time - $t0));
	my @ids = create_requests($node, 3);
	submitted_ok($node, \@ids, 30, 'the new worker submits');
};

scenario 'fast shutdown while 50 calls hang' => sub {
	$node->append_conf('postgresql.conf',
		"qes_sign.max_concurrency = 64\nqes_sign.max_host_connections = 64\nqes_sign.http_timeout = '120s'\n");
	$node->restart;
	ctl_post($d, 'faults', { timeout_rate => 1, timeout_ms => 60000 });
	my @h = create_requests($node, 50);
	my $deadline = time + 30;
	usleep(100_000) while double_stats($d)->{in_flight} < 50 && time < $deadline;
	cmp_ok(double_stats($d)->{in_flight}, '>=', 50, '50 calls hang at the double');
	my $t0 = time;
	$node->stop('fast');
	my $took = time - $t0;
	cmp_ok($took, '<', 5, sprintf('pg_ctl stop -m fast returned in %.2f s', $took));
	ctl_post($d, 'faults', {});
};

done_testing();
