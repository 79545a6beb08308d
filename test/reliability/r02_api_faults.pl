# r02: about 20 % of the provider's API calls fail while requests go through
# the whole lifecycle (to archiviert, S3 included): 5xx (503, later 500),
# 429 with Retry-After, timeouts and connections closed after the call was
# applied (Skribble: a stored create; Yousign: each of the four create
# steps: draft, upload, signer, activate); the mix is api_faults in
# Reliability.pm.  Full: 1,000 requests; reduced: 100.  Every request ends
# archiviert, each is created exactly once at the provider (Yousign: and
# activated once), the audit chain verifies, the retries
# (operations.api_retries) stay below 3 per request (Yousign, with twice
# the calls a request: below one per fault injected plus one per request,
# for an audit trail not ready yet).
# QES_PROVIDER=skribble (default) or yousign; r02_api_faults_yousign.pl runs it against Yousign.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::RealBin/../perl", $FindBin::RealBin;
use QesTest;
use Reliability;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time sleep);

my $n = scaled(1000, 100);
my $seed = $ENV{QES_SEED} // time % 100000;
srand($seed);
my $d    = start_provider();
my $pn   = provider_name($d);
my %faults = api_faults($d, $seed);
note("r02 ($pn): $n requests, faults " . join(' ', map { "$_=$faults{$_}" } sort keys %faults));

my $s3   = start_s3();
my $node = rnode('r02', $d, $s3);

my $t0 = time;
ctl_post($d, 'faults', \%faults);
my ($idr, $batches) = sign_in_batches($node, $d, $n, 'R02', 180, sub {
	my ($so_far) = @_;
	if (@$so_far >= $n / 2 && $faults{error_status} == 503)
	{    # the second half sees 500s instead of 503s
		$faults{error_status} = 500;
		ctl_post($d, 'faults', \%faults);
	}
});
my @ids = @$idr;
is(scalar(@ids), $n, "$n requests created, submitted and signed in $batches batches through faults");
my $list = in_list(@ids);
note(sprintf('all signed after %.1f s', time - $t0));
ok(wait_until($node, "SELECT count(*) FROM qes_sign.signatur_anfragen WHERE status = 'archiviert' AND id IN ($list)",
		$n, scaled(900, 240)), "all $n archiviert through faults")
  or diag('status: ' . status_counts($node, \@ids));
note(sprintf('archiviert after %.1f s', time - $t0));
my $st = save_stats($d);
ctl_post($d, 'faults', {});

my $fi = $st->{faults_injected};
my $injected = 0;
$injected += $fi->{$_} for keys %$fi;
note("faults injected: " . join(' ', map { "$_=$fi->{$_}" } sort keys %$fi)
	  . " of $st->{total_calls} API calls (" . sprintf('%.1f %%', 100 * $injected / ($st->{total_calls} || 1)) . ')');
cmp_ok($fi->{$_}, '>', 0, "faults injected: $_ ($fi->{$_})") for api_fault_kinds($d);
my $rate = $injected / ($st->{total_calls} || 1);
ok($rate > 0.15 && $rate < 0.27, sprintf('about 20 %% of the calls failed (%.1f %%)', 100 * $rate));

my $once = exactly_once_ok($d, \@ids, "each of the $n created exactly once at $pn");
my $recovered = rpsql($node, "SELECT count(*) FROM qes_sign.audit_log WHERE event = 'create_recovered' AND request_id IN ($list)");
my $key = lookup_key($d);
my @drops = grep { /^drop_after/ } sort keys %$fi;
note("creates recovered through $key: $recovered (connections dropped after a stored call: "
	  . join(' ', map { "$_=$fi->{$_}" } @drops) . ')');
cmp_ok($recovered, '>=', 1, "creates whose answer was lost were found again through $key");
is(rpsql($node, 'SELECT ok FROM qes_sign.verify_audit_chain()'), 't', 'audit chain intact');
is(rpsql($node, "SELECT count(*) FROM qes_sign.work_items WHERE state = 'failed' AND request_id IN ($list)"), '0',
	'no work item given up');

my $ops = ops($node);
note("operations: api_calls=$ops->{api_calls} api_retries=$ops->{api_retries} api_failures=$ops->{api_failures} logins=$ops->{logins}");
cmp_ok($ops->{api_retries}, '>', 0, "retries counted ($ops->{api_retries})");
if ($pn eq 'Yousign')
{    # twice Skribble's calls a request: one retry per fault, and one per audit trail not ready yet
	cmp_ok($ops->{api_retries}, '<', $injected + $n, "retries bounded: $ops->{api_retries} < $injected faults + $n requests");
}
else
{
	cmp_ok($ops->{api_retries}, '<', 3 * $n, "retries bounded: $ops->{api_retries} < 3 x $n requests");
}

my $b = bucket_check($node, $s3, \@ids);
ok($b->{verified} == 4 * $n && !@{ $b->{missing} } && $b->{incomplete} == 0 && !@{ $b->{stray} } && !@{ $b->{half} },
	"the bucket holds exactly the 4 objects of every request with matching sha256 ($b->{verified} verified)")
  or diag("missing/different: @{$b->{missing}}[0..4]; stray: @{$b->{stray}}[0..4]; incomplete: $b->{incomplete}");

my ($deaths, $reinit, $panic) = log_deaths($node);
is(scalar(@$deaths) + $panic, 0, 'no process terminated by a signal, no PANIC');
diag($_->[2]) for @$deaths;

counts_line('r02_api_faults',
	outcome_counts($d, $once, $n, count_where($node, "status = 'archiviert' AND id IN ($list)")),
	faults_injected => $injected,
	(map { ("faults_$_" => $fi->{$_}) } sort keys %$fi),
	api_calls_at_double => $st->{total_calls},
	fault_rate_pct => sprintf('%.1f', 100 * $rate),
	api_retries => $ops->{api_retries},
	api_failures => $ops->{api_failures},
	create_recovered => $recovered,
	worker_kills => 0,
	server_crashes => scalar(@$deaths) + $panic,
	seconds => sprintf('%.0f', time - $t0),
	seed => $seed);

$node->stop;
done_testing();
