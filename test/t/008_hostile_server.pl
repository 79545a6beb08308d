# Hostile server: answers a broken or hostile Skribble could give (a login
# token whose payload is deeply nested JSON or has absurd exp/iat, a 403
# whose body is deeply nested JSON, a 200 that is valid JSON but no
# SignatureRequest) never end the worker; it keeps working, and an answer
# it cannot apply counts as a failed attempt that is given up visibly.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::RealBin/../perl";
use QesTest;
use PostgreSQL::Test::Utils;
use Test::More;
use MIME::Base64 qw(encode_base64url);
use Time::HiRes qw(time sleep);

# tokens live 4 s, so the worker logs in again every 3 s by itself
my $d    = start_double('token-ttl' => 4);
my $node = qes_node('hostile', double => $d, relay => 0,
	conf => { 'qes_sign.retry_max_attempts' => 3, 'qes_sign.retry_base_delay' => "'100ms'" });
my @ids = create_requests($node, 1);
submitted_ok($node, \@ids, 30, 'the worker submits before any hostile answer');
my $pid = worker_pid($node);
ok($pid, "worker pid $pid");

# jwt(payload): a token with this payload text (its signature is none the double accepts)
sub jwt
{
	return encode_base64url('{"alg":"HS256","typ":"JWT"}') . '.'
	  . encode_base64url($_[0]) . '.c2lnbmF0dXJl';
}

sub login_calls { return double_stats($d)->{calls}{'POST /v2/access/login'} // 0; }

# hostile_login(payload, counter): the next login answers a JWT with this
# payload; waits until the worker has counted it (logins: it took the
# token; login_failures: it refused it)
sub hostile_login
{
	my ($payload, $counter) = @_;
	my $before = ops($node)->{$counter};
	ctl_post($d, 'script', { method => 'POST', path => '^/v2/access/login$', status => 200,
			headers => { 'Content-Type' => 'text/plain;charset=UTF-8' }, body => jwt($payload), times => 1 });
	ok(wait_until($node, "SELECT value > $before FROM qes_sign.operations WHERE metric = '$counter'", 't', 15),
		"the worker counted the hostile login answer in $counter");
	is_deeply(ctl_get($d, 'script'), [], 'the script is used up');
	return;
}

sub survived_ok { is(worker_pid($node), $pid, "the worker (pid $pid) survived"); }

# keeps_working_ok: a new request is submitted (its first call, refused for
# the hostile token, makes the worker log in again)
sub keeps_working_ok
{
	my @r = create_requests($node, 1);
	submitted_ok($node, \@r, 30, 'a request created afterwards is submitted');
	survived_ok();
	return @r;
}

# refresh(id): queue a GET of the request at Skribble
sub refresh
{
	$node->safe_psql('postgres', "SET search_path = qes_sign; SELECT _enqueue('$_[0]', 'refresh')");
	return;
}

sub skribble_id
{
	return $node->safe_psql('postgres',
		"SELECT provider_id FROM qes_sign.signatur_anfragen WHERE id = '$_[0]'");
}

scenario 'login token with a payload of 100,000 nested [' => sub {
	my $offset = -s $node->logfile;
	# 266 kB: no server would take it in a header line
	hostile_login('[' x 100_000 . ']' x 100_000, 'login_failures');
	ok($node->log_contains(qr/Skribble login failed: HTTP 200, but the answer is no JWT of at most 8192 bytes/, $offset),
		'the worker refused the token and said why');
	survived_ok();
	keeps_working_ok();
};

scenario 'login token nested 6,000 deep within the size the worker reads, max_stack_depth 100kB' => sub {
	# only a low max_stack_depth makes a payload this short too deep to parse
	$node->safe_psql('postgres', "ALTER SYSTEM SET max_stack_depth = '100kB'; SELECT pg_reload_conf()");
	sleep(0.5);
	my $offset = -s $node->logfile;
	hostile_login('[' x 6000, 'logins');
	ok($node->wait_for_log(qr/could not read field "exp" of an answer: stack depth limit exceeded/, $offset),
		'the worker warned that it could not read exp');
	survived_ok();
	$node->safe_psql('postgres', "ALTER SYSTEM RESET max_stack_depth; SELECT pg_reload_conf()");
	sleep(0.5);
	keeps_working_ok();
};

for my $case (
	[ 'exp 1e400, iat -1e400', '{"sub":"x","iat":-1e400,"exp":1e400}' ],
	[ 'exp 99999999999999999999999', '{"sub":"x","iat":' . int(time) . ',"exp":99999999999999999999999}' ],
	[ 'exp 1e13 s after iat', '{"sub":"x","iat":0,"exp":10000000000000}' ])
{
	my ($name, $payload) = @$case;
	scenario "login token with $name" => sub {
		hostile_login($payload, 'logins');
		# unknown lifetime: the token is kept, no login each second
		my $before = login_calls();
		sleep(3);
		cmp_ok(login_calls() - $before, '<=', 1, 'no more than one login in the next 3 s');
		survived_ok();
		keeps_working_ok();
	};
}

scenario '403 to a GET whose body is JSON nested 100,000 deep' => sub {
	my ($id) = create_requests($node, 1);
	submitted_ok($node, [$id], 30);
	my $sr = skribble_id($id);
	my $offset = -s $node->logfile;
	ctl_post($d, 'script', { method => 'GET', path => "^/v2/signature-requests/$sr\$", status => 403,
			headers => { 'Content-Type' => 'application/problem+json' },
			body => '{"key":' . '[' x 100_000 . ']' x 100_000 . '}', times => 1 });
	refresh($id);
	# a 403 without an error.auth key on a refresh is retried (only a refused
	# create ends a request): recorded as a failure, then sent again
	ok(wait_until($node, "SELECT (state = 'done' AND attempts >= 2) OR (leased_until IS NULL AND failures > 0) "
			  . "FROM qes_sign.work_items WHERE request_id = '$id' AND kind = 'refresh'", 't', 15),
		'the answer was recorded as a failed attempt and retried, not left leased');
	isnt($node->safe_psql('postgres', "SELECT status FROM qes_sign.signatur_anfragen WHERE id = '$id'"),
		'abgebrochen', 'the request goes on');
	ok($node->log_contains(qr/could not read field "key" of an answer: stack depth limit exceeded/, $offset),
		'the worker warned that it could not read the key');
	note('the refresh item: ' . $node->safe_psql('postgres',
		"SELECT state || ', failures ' || failures || ', ' || left(coalesce(last_error, ''), 60) FROM qes_sign.work_items "
		  . "WHERE request_id = '$id' AND kind = 'refresh'"));
	survived_ok();
	keeps_working_ok();
};

scenario 'an answer that cannot be applied: retried, given up after 3 failures, visibly' => sub {
	my ($id) = create_requests($node, 1);
	submitted_ok($node, [$id], 30);
	my $sr = skribble_id($id);
	my $ops = ops($node);
	my $offset = -s $node->logfile;
	# valid JSON, but not a SignatureRequest: apply_signature_request raises
	ctl_post($d, 'script', { method => 'GET', path => "^/v2/signature-requests/$sr\$", status => 200,
			headers => { 'Content-Type' => 'application/json' }, body => '{"id": 42, "signatures": []}',
			times => 10 });
	refresh($id);
	my $item = "FROM qes_sign.work_items WHERE request_id = '$id' AND kind = 'refresh'";
	ok(wait_until($node, "SELECT failures > 0 $item", 't', 15), 'the failed apply counts as a failure');
	ok(wait_until($node, "SELECT state $item", 'failed', 15), 'the refresh is given up');
	sleep(1);    # a re-send would come now
	is($node->safe_psql('postgres', "SELECT attempts $item"), '3', 'after 3 attempts');
	is(ctl_get($d, 'script')->[0]{times}, 7, 'the double answered 3 GETs, no more');
	is($node->safe_psql('postgres',
			"SELECT count(*) FROM qes_sign.request_errors WHERE request_id = '$id' AND state = 'failed'"),
		'1', 'a row in request_errors');
	like($node->safe_psql('postgres', "SELECT last_error FROM qes_sign.request_errors WHERE request_id = '$id'"),
		qr/SignatureRequest/, 'naming what could not be applied');
	ok(grep({ $_ eq 'call_failed' } @{ events($node, $id) }), 'and in the audit trail (call_failed)');
	isnt($node->safe_psql('postgres', "SELECT status FROM qes_sign.signatur_anfragen WHERE id = '$id'"),
		'abgebrochen', 'the request itself stands, for an operator');
	my $now = ops($node);
	is($now->{api_retries} - $ops->{api_retries}, 2, 'operations: 2 retries');
	is($now->{api_failures} - $ops->{api_failures}, 1, 'operations: 1 failure');
	ok($node->log_contains(qr/could not apply the answer to work item/, $offset), 'a warning in the log');
	ok(!$node->log_contains(qr/could not record the answer to work item/, $offset),
		'the failed attempt itself was recorded');
	ctl_post($d, 'script', {});
	survived_ok();
	keeps_working_ok();
};

ok(!$node->log_contains(qr/background worker "qes_sign worker.*exited|FATAL/), 'no worker exit, no FATAL, in the whole log');
$node->stop;
done_testing();
