# r04: failover.  A primary with a streaming standby, both configured
# against the same provider double and S3 bucket; requests in flight (full:
# 500; reduced: 50), some already signed; the primary is stopped hard
# (immediate: its worker dies with calls in flight) and the standby
# promoted; the callback relay now delivers to the new primary.  The new
# primary's worker finishes every request to archiviert, and none is
# created twice at the provider (Yousign: nor activated twice): creates
# sent but not recorded (or not yet replicated) at the failover must be
# found again (Skribble: through custom; Yousign: through external_id,
# continuing a draft from the step it reached).
# QES_R04_SYNC=1 runs with synchronous replication (synchronous_standby_names = '*').
# QES_PROVIDER=skribble (default) or yousign; r04_failover_yousign.pl runs it against Yousign.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::RealBin/../perl", $FindBin::RealBin;
use QesTest;
use Reliability;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time sleep);

my $n    = scaled(500, 50);
my $sync = $ENV{QES_R04_SYNC} ? 1 : 0;
note("r04 (" . ucfirst(provider()) . "): $n requests, " . ($sync ? 'synchronous' : 'asynchronous') . ' streaming replication');

my $d  = start_provider();
my $pn = provider_name($d);
my $s3 = start_s3();
my $primary = rnode('primary', $d, $s3, streaming => 1);
$primary->backup('base');
my $standby = PostgreSQL::Test::Cluster->new('standby');
$standby->init_from_backup($primary, 'base', has_streaming => 1);
$standby->start;
if ($sync)
{    # only now: CREATE EXTENSION above would wait for a standby that does not exist yet
	$primary->safe_psql('postgres', "ALTER SYSTEM SET synchronous_standby_names = '*'");
	$primary->safe_psql('postgres', 'SELECT pg_reload_conf()');
}
ok(wait_until($standby, "SELECT query FROM pg_stat_activity WHERE backend_type = 'qes_sign worker'",
		'standby: waiting for promotion', 30), 'the standby worker waits for promotion');

my $t0 = time;
# wave 1 (a fifth): submitted and signed, on its way to vollstaendig and the archive at the failover
my $n1 = int($n / 5);
my @w1 = rcreate($primary, $n1, 'R04a', 50);
ok(wait_until($primary, "SELECT count(*) FROM qes_sign.signatur_anfragen WHERE provider_id IS NOT NULL AND id IN ("
		  . in_list(@w1) . ')', $n1, 60), "wave 1: $n1 submitted");
my @signed = @w1;
is(rsign($d, $primary, \@signed), 0, "wave 1: $n1 signed before the failover");
# wave 2: slow creates, a third of them stored at the double with the connection cut before the answer
# (Yousign: also some uploads and activations; failover_faults)
set_latency($d, $ENV{QES_R04_LATENCY_MS} // 400);
ctl_post($d, 'faults', failover_faults($d));
my @w2 = rcreate($primary, $n - $n1, 'R04b', 50);
my @ids = (@w1, @w2);
my $list = in_list(@ids);
my $l2 = in_list(@w2);
# fail over while wave 2 is being submitted
my $deadline = time + 60;
my $in_flight = 0;
while (time < $deadline)
{
	my $st = double_stats($d);
	my $created = created_at_double($d, $st);
	my $stored = grep { $created->{$_} } @w2;
	$in_flight = $st->{in_flight};
	last if $stored >= @w2 / 3 && $in_flight > 0;
	sleep 0.05;
}
my $recorded_where = recorded_where($d);
my $on_primary = count_where($primary, "$recorded_where AND id IN ($list)");
$primary->stop('immediate');
my $t_fail = time;
ctl_post($d, 'faults', {});
set_latency($d, 0);
my $created = created_at_double($d);
my $sent = grep { $created->{$_} } @ids;
note(sprintf('primary stopped (immediate) at +%.1f s: %d calls in flight at the double just before, %d creates stored, '
	  . '%d recorded on the primary', $t_fail - $t0, $in_flight, $sent, $on_primary));

# what the standby knows at the failover (it is readable before the promotion)
my $recorded = count_where($standby, "$recorded_where AND id IN ($list)");
my $posted_open = rpsql($standby, "SELECT count(*) FROM qes_sign.work_items WHERE kind = 'submit' AND state = 'pending' "
	  . "AND payload ? 'posted' AND request_id IN ($list)");
my $unknown = $sent - $recorded;
note("on the standby at the failover: $recorded requests with their $pn id"
	  . ($pn eq 'Yousign' ? ' or draft' : '') . ", $unknown sent but not recorded there, $posted_open submits marked posted");

cmp_ok($unknown + $posted_open, '>', 0, 'the failover left creates whose outcome the new primary does not know');

# the portal's callback endpoint now delivers to the new primary: the relay
# on the same port, connected to the standby
my $port = $primary->{relay}{port};
stop_child($primary->{relay});
my $user = getpwuid($<);
QesTest::start_child('relay_standby', 'node', "$FindBin::RealBin/../relay/relay.js", '--port', $port,
	'--db', sprintf('host=%s port=%s dbname=postgres user=%s', $standby->host, $standby->port, $user), '--verbose');
$standby->promote;
my $t_prom = time;
my $submitted = ok(wait_until($standby, "SELECT count(*) FROM qes_sign.signatur_anfragen WHERE provider_id IS NOT NULL AND id IN ($list)",
		$n, scaled(300, 120)), "the new primary has all $n submitted")
  or diag('status: ' . status_counts($standby, \@ids));
my %done = map { $_ => 1 } @signed;
my @rest = grep { !$done{$_} } @ids;
is(rsign($d, $standby, \@rest), 0, scalar(@rest) . ' other requests signed after the failover');
# a request never submitted cannot be signed: then wait only for the submitted ones
my $can = $submitted ? $n : count_where($standby, "provider_id IS NOT NULL AND id IN ($list)");
ok(wait_until($standby, "SELECT count(*) FROM qes_sign.signatur_anfragen WHERE status = 'archiviert' AND id IN ($list)",
		$can, scaled(600, 180)) && $can == $n, "the new primary archived all $n")
  or diag('status: ' . status_counts($standby, \@ids));
note(sprintf('all archiviert %.1f s after the promotion', time - $t_prom));

save_stats($d);    # tmp_check/log/<script>_stats.json
my $once = exactly_once_ok($d, \@ids, "each of the $n created exactly once at $pn across the failover");
my @twice = @{ $once->{twice} };
if (@twice)
{
	my $st = double_stats($d);
	for my $id (@twice[ 0 .. ($#twice < 2 ? $#twice : 2) ])
	{
		diag('created ' . created_at_double($d, $st)->{$id} . ' times'
			  . ($pn eq 'Yousign' ? ', activated ' . ($st->{activated_by_external_id}{$id} // 0) . ' times' : '')
			  . ": $id; events on the new primary: " . join(' ', @{ events($standby, $id) }));
	}
}
my $recovered = rpsql($standby, "SELECT count(*) FROM qes_sign.audit_log WHERE event = 'create_recovered' AND request_id IN ($list)");
note('creates recovered through ' . lookup_key($d) . " on the new primary: $recovered");
is(rpsql($standby, 'SELECT ok FROM qes_sign.verify_audit_chain()'), 't', 'audit chain intact on the new primary');
my $b = bucket_check($standby, $s3, \@ids);
ok($b->{verified} == 4 * $n && !@{ $b->{missing} } && $b->{incomplete} == 0 && !@{ $b->{stray} } && !@{ $b->{half} },
	"the bucket holds exactly the 4 objects of every request with matching sha256 ($b->{verified} verified)")
  or diag("missing/different: @{$b->{missing}}[0..4]; stray: @{$b->{stray}}[0..4]; incomplete: $b->{incomplete}");
my ($deaths, $reinit, $panic) = log_deaths($standby);
is(scalar(@$deaths) + $panic, 0, 'no process of the new primary terminated by a signal, no PANIC');
diag($_->[2]) for @$deaths;

my $archived = count_where($standby, "status = 'archiviert' AND id IN ($list)");
counts_line('r04_failover',
	outcome_counts($d, $once, $n, $archived),
	replication => $sync ? 'sync' : 'async',
	signed_before_failover => scalar(@signed),
	calls_in_flight_at_failover => $in_flight,
	sent_at_failover => $sent,
	recorded_on_standby_at_failover => $recorded,
	sent_not_recorded => $unknown,
	create_recovered => $recovered,
	faults_injected => 1,
	worker_kills => 0,
	server_crashes => scalar(@$deaths) + $panic,
	seconds => sprintf('%.0f', time - $t0));

$standby->stop;
done_testing();
