# test/perl/QesTest.pm: shared helpers of qes_sign's TAP tests (test/t/*.pl).
#
# Starts the Skribble double (test/skribble_double/server.js), the
# callback relay (test/relay/relay.js) and the S3 server of the archive
# (test/s3/server.js) as child processes, creates
# PostgreSQL::Test::Cluster nodes configured for the background worker, and
# offers the steps the tests repeat: create requests, sign them at the
# double, wait for a SQL condition, read the double's statistics.  Every
# child process is killed when the test script ends.
package QesTest;

use strict;
use warnings;
use Exporter 'import';
use File::Basename qw(basename dirname);
use Cwd qw(abs_path);
use HTTP::Tiny;
use IPC::Run;
use File::Path ();
use JSON::PP;
use POSIX qw(WNOHANG);
use Time::HiRes qw(time usleep);
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

our @EXPORT = qw(scenario start_double start_relay stop_child qes_node ctl ctl_get ctl_post
  double_stats create_requests submitted_ok all_status_ok sign_all signer_action wait_until
  query_list in_list ops events worker_pid creates_once_ok test_pdf
  start_s3 stop_s3 restart_s3 s3_check s3_log s3_ctl complete_requests
  start_yousign yousign_hook ysr yousign_action yousign_pdf);

my $repo = abs_path(dirname(__FILE__) . '/../..');
my @children;    # every child process started here, killed at END
my $json = JSON::PP->new->canonical;
my $http = HTTP::Tiny->new(timeout => 30, keep_alive => 1);

# scenario(name, code): one test of a script, run as a subtest; an
# exception inside fails it and lets the script go on with the next one.
sub scenario
{
	my ($name, $code) = @_;
	local $Test::Builder::Level = $Test::Builder::Level + 1;
	return subtest $name => sub {
		my $ok = eval { $code->(); 1 };
		fail("died: $@") unless $ok;
	};
}

# A small valid PDF; $extra lands in the body (e.g. "/Encrypt" for a 406).
# yousign_pdf(extra): a one-page PDF 1.7 (Yousign wants 1.6 or later and a
# page for each signature field)
sub yousign_pdf
{
	my ($extra) = @_;
	$extra //= '';
	return "%PDF-1.7\n1 0 obj\n<< /Type /Catalog /Pages 2 0 R >>\nendobj\n"
	  . "2 0 obj\n<< /Type /Pages /Kids [3 0 R] /Count 1 >>\nendobj\n"
	  . "3 0 obj\n<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] >>\nendobj\n$extra"
	  . "trailer\n<< /Root 1 0 R >>\n%%EOF\n";
}

sub test_pdf
{
	my ($extra) = @_;
	$extra //= '';
	return "%PDF-1.4\n1 0 obj\n<< /Type /Catalog /Pages 2 0 R >>\nendobj\n"
	  . "2 0 obj\n<< /Type /Pages /Kids [] /Count 0 $extra>>\nendobj\n"
	  . "trailer\n<< /Root 1 0 R >>\n%%EOF\n";
}

# start_child(name, cmd...): runs cmd with stdout/stderr in the test's log
# folder and waits for its "LISTENING <port>" line; returns {pid, port, name}.
sub start_child
{
	my ($name, @cmd) = @_;
	my $script = basename($0, '.pl');
	my $out = "$PostgreSQL::Test::Utils::log_path/${script}_$name.out";
	my $err = "$PostgreSQL::Test::Utils::log_path/${script}_$name.log";
	unlink $out;
	my $pid = fork() // die "fork: $!";
	if ($pid == 0)
	{
		open STDIN,  '<',  '/dev/null';
		open STDOUT, '>',  $out or die "$out: $!";
		open STDERR, '>>', $err or die "$err: $!";
		exec @cmd or die "exec @cmd: $!";
	}
	push @children, $pid;
	my $deadline = time + 20;
	while (time < $deadline)
	{
		if (open my $fh, '<', $out)
		{
			my $text = do { local $/; <$fh> } // '';
			return { pid => $pid, port => $1, name => $name }
			  if $text =~ /^LISTENING (\d+)$/m;
		}
		if (waitpid($pid, WNOHANG) == $pid)
		{
			die "$name exited at start: " . PostgreSQL::Test::Utils::slurp_file($err);
		}
		usleep(50_000);
	}
	die "$name did not print LISTENING within 20 s";
}

# stop_child(child): SIGTERM, then SIGKILL after 5 s.
sub stop_child
{
	my ($c) = @_;
	return unless $c && $c->{pid};
	local $?;
	kill 'TERM', $c->{pid};
	my $deadline = time + 5;
	while (time < $deadline)
	{
		last if waitpid($c->{pid}, WNOHANG) != 0;
		usleep(20_000);
	}
	if (kill(0, $c->{pid}))
	{
		kill 'KILL', $c->{pid};
		waitpid($c->{pid}, 0);
	}
	@children = grep { $_ != $c->{pid} } @children;
	$c->{pid} = undef;
	return;
}

END
{
	local $?;
	for my $pid (@children)
	{
		kill 'KILL', $pid;
		waitpid($pid, 0);
	}
}

# start_double(option => value, ...): the Skribble double on a free port;
# returns {pid, port, url => http://127.0.0.1:port}.
sub start_double
{
	my (%opt) = @_;
	$opt{'callback-retry-interval'} //= 200;
	my @args = map { ("--$_", $opt{$_}) } sort keys %opt;
	push @args, '--verbose' if $ENV{QES_DOUBLE_VERBOSE};    # every call in the log
	my $d = start_child('double',
		'node', "$repo/test/skribble_double/server.js", '--port', 0, @args);
	$d->{url} = "http://127.0.0.1:$d->{port}";
	return $d;
}

# start_yousign(option => value, ...): the Yousign double on a free port
# (rate limits off and fast webhook retries unless given); returns {pid,
# port, url => http://127.0.0.1:port, secret}.  Its webhooks go nowhere
# until yousign_hook points them at a node's relay.
sub start_yousign
{
	my (%opt) = @_;
	$opt{'rate-per-minute'} //= 0;
	$opt{'rate-per-hour'} //= 0;
	$opt{'webhook-retry-schedule-ms'} //= '200,400,800,1600';
	$opt{'webhook-secret'} //= 'tap-yousign-webhook-secret-0123';
	$opt{'audit-trail-delay-ms'} //= 200;
	my @args = map { ("--$_", $opt{$_}) } sort keys %opt;
	push @args, '--verbose' if $ENV{QES_DOUBLE_VERBOSE};
	my $d = start_child('yousign',
		'node', "$repo/test/yousign_double/server.js", '--port', 0, @args);
	$d->{url} = "http://127.0.0.1:$d->{port}";
	$d->{secret} = $opt{'webhook-secret'};
	return $d;
}

# yousign_hook(double, node): the double's webhooks go to the node's relay
sub yousign_hook
{
	my ($y, $node) = @_;
	ctl_post($y, 'webhook', { url => "http://127.0.0.1:$node->{relay}{port}/qes/webhook" });
	return;
}

# ysr(double, request id): the double's stored request of ours (by
# external_id), or undef
sub ysr
{
	my ($y, $id) = @_;
	my $all = ctl_get($y, "requests?external_id=$id");
	$all = $all->{data} if ref $all eq 'HASH';
	my @live = grep { $_->{status} ne 'deleted' } @{ $all // [] };
	return $live[0];
}

# yousign_action(double, yousign id, email, open|identify|sign|decline, body): the HTTP status
sub yousign_action
{
	my ($y, $sr, $email, $action, $body) = @_;
	my $res = $http->request('POST',
		"$y->{url}/_control/signature_requests/$sr/signers/$email/$action",
		{
			headers => { 'Content-Type' => 'application/json' },
			content => $json->encode($body // {})
		});
	return $res->{status};
}

# start_relay(node): the callback relay, connected (lazily) to the node's postgres database.
sub start_relay
{
	my ($node, @extra) = @_;
	my $user = getpwuid($<);
	my $db   = sprintf("host=%s port=%s dbname=postgres user=%s", $node->host, $node->port, $user);
	return start_child('relay_' . $node->name,
		'node', "$repo/test/relay/relay.js", '--port', 0, '--db', $db, '--verbose', @extra);
}

# qes_node(name, double => $d, yousign => $y, relay => 1, streaming => 0, s3 => $s3, conf => {guc => value}):
# a started node with the worker configured against the double (and with
# s3 => start_s3(...) against that bucket), qes_sign
# created in database postgres; the relay (unless relay => 0) is
# $node->{relay}.  With relay => 0 callbacks go to a closed port.
# version => '1.0' creates that version of qes_sign instead of the default;
# install_path => dir runs the node from another PostgreSQL installation
# (a directory with bin and lib, as PostgreSQL::Test::Cluster takes it).
sub qes_node
{
	my ($name, %o) = @_;
	my $node = PostgreSQL::Test::Cluster->new($name,
		$o{install_path} ? (install_path => $o{install_path}) : ());
	$node->init(allows_streaming => $o{streaming} ? 1 : 0);
	my $relay_port = 1;
	if ($o{relay} // 1)
	{
		$node->{relay} = start_relay($node);
		$relay_port = $node->{relay}{port};
	}
	my %conf = (
		shared_preload_libraries      => "'qes_sign'",
		'qes_sign.database'           => "'postgres'",
		$o{double}
		? ('qes_sign.skribble_url'      => "'$o{double}{url}/v2'",
			'qes_sign.skribble_username' => "'api_demo_qes_sign'",
			'qes_sign.skribble_api_key'  => "'test-key'")
		: (),
		'qes_sign.callback_base_url'  => "'http://127.0.0.1:$relay_port/qes/callback'",
		'qes_sign.callback_secret'    => "'tap-test-callback-secret-0123456789abcdef'",
		'qes_sign.reconcile_interval' => "'1h'",
		'qes_sign.retry_base_delay'   => "'100ms'",
		'qes_sign.http_timeout'       => "'2s'",
		'qes_sign.worker_restart_delay' => 1,
		$o{yousign}
		? ('qes_sign.yousign_url'             => "'$o{yousign}{url}/v3'",
			'qes_sign.yousign_api_key'         => "'test-key'",
			'qes_sign.yousign_webhook_secrets' => "'$o{yousign}{secret}'")
		: (),
		$o{s3}
		? ('qes_sign.s3_endpoint' => "'$o{s3}{url}'",
			'qes_sign.s3_region'     => "'us-east-1'",
			'qes_sign.s3_bucket'     => "'$o{s3}{bucket}'",
			'qes_sign.s3_access_key' => "'$o{s3}{access_key}'",
			'qes_sign.s3_secret_key' => "'$o{s3}{secret_key}'")
		: (),
		restart_after_crash           => 'on',    # Cluster.pm sets off; the kill -9 tests need it
		max_connections               => 40,
		shared_buffers                => "'32MB'",
		log_statement                 => "'none'",
		%{ $o{conf} // {} });
	$node->append_conf('postgresql.conf',
		join('', map { "$_ = $conf{$_}\n" } sort keys %conf));
	$node->start;
	$node->safe_psql('postgres', 'CREATE EXTENSION qes_sign'
		  . ($o{version} ? " VERSION '$o{version}'" : '') . ' CASCADE');
	yousign_hook($o{yousign}, $node) if $o{yousign} && $node->{relay};
	return $node;
}

# ctl(method, double, path, body): a call to the double's /_control API; returns the decoded answer.
sub ctl
{
	my ($method, $d, $path, $body) = @_;
	my $res = $http->request($method, "$d->{url}/_control/$path",
		{
			headers => { 'Content-Type' => 'application/json' },
			defined $body ? (content => $json->encode($body)) : ()
		});
	die "$method /_control/$path: $res->{status} $res->{content}"
	  unless $res->{success};
	return length($res->{content}) ? $json->decode($res->{content}) : undef;
}
sub ctl_get  { return ctl('GET',  @_); }
sub ctl_post { return ctl('POST', $_[0], $_[1], $_[2] // {}); }
sub double_stats { return ctl_get($_[0], 'stats'); }

# signer_action(double, provider_id, email, view|sign|decline, body): returns the HTTP status.
sub signer_action
{
	my ($d, $sr, $email, $action, $body) = @_;
	my $res = $http->request('POST',
		"$d->{url}/_control/signature-requests/$sr/signatures/$email/$action",
		{
			headers => { 'Content-Type' => 'application/json' },
			content => $json->encode($body // {})
		});
	return $res->{status};
}

# query_list(node, sql): rows as arrays of columns.
sub query_list
{
	my ($node, $sql) = @_;
	my $out = $node->safe_psql('postgres', $sql);
	return map { [ split /\|/, $_, -1 ] } grep { length } split /\n/, $out;
}

# create_requests(node, n, signers => 2, ordered => 0, expires_in => undef, document => pdf):
# n requests with signers signer1..k@example.org; returns their ids in order.
sub create_requests
{
	my ($node, $n, %o) = @_;
	my $k = $o{signers} // 2;
	my $yousign = ($o{provider} // '') eq 'yousign';
	my $doc = unpack('H*', $o{document} // ($yousign ? yousign_pdf() : test_pdf()));
	my $signers = join(', ',
		map {
			"jsonb_build_object('first_name', 'Signer', 'last_name', 'Nummer $_', "
			  . "'email', 'signer$_\@example.org'"
			  . ($yousign ? ", 'mobile', '+49 151 1000000$_'" : '')
			  . ($o{ordered} ? ", 'sequence', $_" : '') . ')'
		} 1 .. $k);
	my $args = '';
	$args .= ", provider => '$o{provider}'" if $o{provider};
	$args .= ", ordered => true" if $o{ordered};
	$args .= ", expires_in => interval '$o{expires_in}'" if $o{expires_in};
	my $out = $node->safe_psql('postgres', qq{
		SELECT qes_sign.create_request('hv-test', 'Mietvertrag Nr. ' || g,
		       '\\x$doc'::bytea, jsonb_build_array($signers)$args)
		  FROM generate_series(1, $n) g ORDER BY g});
	return split /\n/, $out;
}

# in_list(values): a quoted, comma-separated SQL list
sub in_list { return join(', ', map { "'$_'" } @_); }

# wait_until(node, sql, expected = 't', timeout = 60): polls every 0.2 s; true once sql gives expected.
sub wait_until
{
	my ($node, $sql, $expected, $timeout) = @_;
	$expected //= 't';
	my $deadline = time + ($timeout // 60);
	my ($out, $err) = ('', '');
	while (time < $deadline)
	{
		$node->psql('postgres', $sql, stdout => \$out, stderr => \$err);
		return 1 if $out eq $expected;
		usleep(200_000);
	}
	diag("wait_until timed out: $sql\n  expected: $expected\n  last: $out $err");
	return 0;
}

# submitted_ok(node, ids, timeout, name): every request got its Skribble id; dies if not.
sub submitted_ok
{
	my ($node, $ids, $timeout, $name) = @_;
	local $Test::Builder::Level = $Test::Builder::Level + 1;
	ok(wait_until($node,
			"SELECT count(*) FROM qes_sign.signatur_anfragen WHERE provider_id IS NOT NULL AND id IN ("
			  . in_list(@$ids) . ')', scalar(@$ids), $timeout),
		$name // scalar(@$ids) . ' requests submitted to Skribble')
	  or die "requests not submitted: nothing to go on with\n";
	return 1;
}

# all_status_ok(node, ids, status, timeout, name): every request reaches status.
sub all_status_ok
{
	my ($node, $ids, $status, $timeout, $name) = @_;
	local $Test::Builder::Level = $Test::Builder::Level + 1;
	return ok(wait_until($node, "SELECT count(*) FROM qes_sign.signatur_anfragen WHERE id IN ("
			  . in_list(@$ids) . ") AND status = '$status'", scalar(@$ids), $timeout),
		$name // scalar(@$ids) . " requests $status");
}

# sign_all(double, node, ids): every current signer of each request signs at
# the double, in sequence order; returns the number of refused signatures.
sub sign_all
{
	my ($d, $node, $ids) = @_;
	my $failed = 0;
	for my $row (query_list($node, qq{
		SELECT a.provider_id, s.email FROM qes_sign.signatur_anfragen a
		  JOIN qes_sign.signers s ON s.request_id = a.id AND s.status <> 'replaced'
		 WHERE a.id IN (} . in_list(@$ids) . q{)
		 ORDER BY a.id, s.sequence NULLS FIRST, s.position}))
	{
		next if signer_action($d, $row->[0], $row->[1], 'sign') == 200;
		diag("$row->[1] could not sign $row->[0] at the double");
		$failed++;
	}
	return $failed;
}

# ops(node): the operations view as a hash.
sub ops
{
	my ($node) = @_;
	return { map { @$_ } query_list($node, 'SELECT metric, value FROM qes_sign.operations') };
}

# events(node, id): the event names of a request's timeline, oldest first.
sub events
{
	my ($node, $id) = @_;
	return [ map { $_->[0] } query_list($node, "SELECT event FROM qes_sign.timeline('$id')") ];
}

# worker_pid(node): pid of the qes_sign worker, or '' if none runs.
sub worker_pid
{
	my ($node) = @_;
	return $node->safe_psql('postgres',
		"SELECT pid FROM pg_stat_activity WHERE backend_type = 'qes_sign worker'");
}

# creates_once_ok(double, ids): the double saw exactly one create per request and no duplicates.
sub creates_once_ok
{
	my ($d, $ids, $name) = @_;
	local $Test::Builder::Level = $Test::Builder::Level + 1;
	my $by = double_stats($d)->{creates_by_custom} // {};
	my @twice   = grep { $by->{$_} > 1 } sort keys %$by;
	my @missing = grep { ($by->{$_} // 0) != 1 } @$ids;
	ok(!@twice && !@missing, $name // 'each request created exactly once at Skribble')
	  or diag("created more than once: @twice[0..($#twice < 9 ? $#twice : 9)]; "
		  . "not exactly once: " . scalar(@missing));
	return;
}

# complete_requests(double, node, n, %create_opts): n requests created,
# submitted and signed by all their signers at the double; returns the ids.
# The worker then moves them to vollstaendig (and archives them).
sub complete_requests
{
	my ($d, $node, $n, %o) = @_;
	local $Test::Builder::Level = $Test::Builder::Level + 1;
	my @ids = create_requests($node, $n, %o);
	submitted_ok($node, \@ids, 60);
	my $refused = sign_all($d, $node, \@ids);
	die "$refused signatures refused by the double\n" if $refused;
	return @ids;
}

# ---- The S3 archive (test/s3/server.js: s3rver behind a capturing front)

# start_s3(bucket => 'archive', access_key => ..., secret_key => ...): the S3
# server on a free port with its objects in tmp_check/s3_<script> and every
# request in tmp_check/log/<script>_s3.jsonl; returns {pid, port, url, dir,
# bucket, access_key, secret_key, log}.
sub start_s3
{
	my (%o) = @_;
	my $script = basename($0, '.pl');
	my $s3 = {
		bucket     => $o{bucket}     // 'archive',
		access_key => $o{access_key} // 'qes-test-access',
		secret_key => $o{secret_key} // 'qes-test-secret',
		dir        => $o{dir}        // "$PostgreSQL::Test::Utils::tmp_check/s3_$script",
		log        => "$PostgreSQL::Test::Utils::log_path/${script}_s3.jsonl",
		port       => 0,
	};
	unlink $s3->{log};
	File::Path::rmtree($s3->{dir});    # a fresh, empty bucket for each run
	return restart_s3($s3);
}

# restart_s3(s3): starts the S3 server again, on the same port and with the
# same objects (after stop_s3); returns s3.
sub restart_s3
{
	my ($s3) = @_;
	my $c = start_child('s3', 'node', "$repo/test/s3/server.js", '--port', $s3->{port},
		'--dir', $s3->{dir}, '--bucket', $s3->{bucket}, '--access-key', $s3->{access_key},
		'--secret-key', $s3->{secret_key}, '--log', $s3->{log});
	die "S3 server came back on port $c->{port}, not $s3->{port}"
	  if $s3->{port} && $c->{port} != $s3->{port};
	$s3->{pid}  = $c->{pid};
	$s3->{port} = $c->{port};
	$s3->{url}  = "http://127.0.0.1:$c->{port}";
	return $s3;
}

# stop_s3(s3): stops the S3 server (connections refused until restart_s3).
sub stop_s3 { my ($s3) = @_; stop_child($s3); return; }

# s3_check(s3, command, args...): test/s3/check.py (Debian's python3-boto3,
# SigV4, path-style) against the bucket; returns its decoded JSON, which has
# {error => {status, code, message}} when S3 refused.  secret => '...' as the
# first pair signs with another secret.
sub s3_check
{
	my ($s3, @args) = @_;
	my $secret = $s3->{secret_key};
	if (@args && $args[0] eq 'secret') { (undef, $secret, @args) = @args; }
	my @cmd = ('/usr/bin/python3', "$repo/test/s3/check.py", '--endpoint', $s3->{url},
		'--bucket', $s3->{bucket}, '--access-key', $s3->{access_key}, '--secret', $secret, @args);
	my ($out, $err) = ('', '');
	IPC::Run::run(\@cmd, '<', \undef, '>', \$out, '2>', \$err);
	my $res = eval { $json->decode($out) };
	die "check.py @args: $err$out" unless $res;
	return $res;
}

# s3_log(s3, filter): the requests the S3 server received, oldest first, as
# {time, method, path, headers => {lower-case name => value}, body_size,
# body_sha256, status, error}; filter (optional) is a sub that gets each one.
sub s3_log
{
	my ($s3, $filter) = @_;
	open my $fh, '<', $s3->{log} or return ();
	my @all = map { $json->decode($_) } grep { /\S/ } <$fh>;
	return $filter ? grep { $filter->($_) } @all : @all;
}

# s3_ctl(s3, 'faults', {status => 503, count => n, methods => ['PUT']}) or s3_ctl(s3, 'stats').
sub s3_ctl
{
	my ($s3, $what, $body) = @_;
	my $res = $http->request(defined $body ? 'POST' : 'GET', "$s3->{url}/_control/$what",
		defined $body ? { content => $json->encode($body) } : {});
	die "S3 /_control/$what: $res->{status} $res->{content}" unless $res->{success};
	return $json->decode($res->{content});
}

# ---- Other processes of a test (PgBouncer, postgres_exporter) and psql sessions through them

push @EXPORT, qw(start_service wait_for_port psql_session session_query session_send session_done session_wait
  session_quit sqlstate prom_scrape);

# start_service(name, {ENV => value}, cmd...): runs cmd (no LISTENING line
# expected) with stdout and stderr in tmp_check/log/<script>_<name>.log;
# returns {pid, name, log}.  stop_child stops it; it is killed at the end
# of the script like every child started here.
sub start_service
{
	my ($name, $env, @cmd) = @_;
	my $script = basename($0, '.pl');
	my $log = "$PostgreSQL::Test::Utils::log_path/${script}_$name.log";
	my $pid = fork() // die "fork: $!";
	if ($pid == 0)
	{
		$ENV{$_} = $env->{$_} for keys %{ $env // {} };
		open STDIN,  '<',  '/dev/null';
		open STDOUT, '>>', $log or die "$log: $!";
		open STDERR, '>&', \*STDOUT or die "dup: $!";
		exec @cmd or die "exec @cmd: $!";
	}
	push @children, $pid;
	return { pid => $pid, name => $name, log => $log };
}

# wait_for_port(service, port, timeout = 20): true once 127.0.0.1:port
# accepts a connection; dies (with the service's log) if the service exits.
sub wait_for_port
{
	my ($svc, $port, $timeout) = @_;
	require IO::Socket::INET;
	my $deadline = time + ($timeout // 20);
	while (time < $deadline)
	{
		my $sock = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $port, Timeout => 1);
		if ($sock) { close $sock; return 1; }
		if (waitpid($svc->{pid}, WNOHANG) == $svc->{pid})
		{
			@children = grep { $_ != $svc->{pid} } @children;
			die "$svc->{name} exited at start: " . PostgreSQL::Test::Utils::slurp_file($svc->{log});
		}
		usleep(50_000);
	}
	return 0;
}

# psql_session(connstr): a psql process kept open on one connection (any
# connection string: through a pooler, as another role), for a test that
# needs several clients at once; statements go through session_query.
# Errors do not end it (no ON_ERROR_STOP) and name their SQLSTATE
# (VERBOSITY verbose); session_quit ends it.
sub psql_session
{
	my ($connstr) = @_;
	my $s = { in => '', out => '', err => '', n => 0, connstr => $connstr };
	$s->{timer} = IPC::Run::timeout($PostgreSQL::Test::Utils::timeout_default);
	$s->{run} = IPC::Run::start(
		[ 'psql', '-XAtq', '-v', 'VERBOSITY=verbose', '-d', $connstr, '-f', '-' ],
		'<', \$s->{in}, '>', \$s->{out}, '2>', \$s->{err}, $s->{timer});
	my ($out, $err) = session_query($s, 'SELECT 1');
	die "psql_session($connstr): $err" unless $out eq '1' && $err eq '';
	return $s;
}

# session_query(session, sql): sends sql (one or more statements) and waits
# until psql has run it; returns (stdout, stderr) without the trailing
# newline, or stdout alone in scalar context.
sub session_query
{
	my ($s, $sql) = @_;
	session_send($s, $sql);
	return session_wait($s);
}

# session_send(session, sql): sends sql without waiting for it (a client
# that queues behind another one's transaction); session_wait collects it.
sub session_send
{
	my ($s, $sql) = @_;
	die "session_send: the last statements were not collected\n" if $s->{banner};
	$s->{banner} = 'qes_session_done ' . ++$s->{n};
	$s->{out} = $s->{err} = '';
	$s->{in} .= "$sql\n;\n\\echo '$s->{banner}'\n\\warn '$s->{banner}'\n";
	$s->{run}->pump_nb;
	return;
}

# session_done(session): true once the statements sent have run (does not block)
sub session_done
{
	my ($s) = @_;
	$s->{run}->pump_nb;
	return $s->{out} =~ /^\Q$s->{banner}\E\n/m && $s->{err} =~ /^\Q$s->{banner}\E\n/m;
}

# session_wait(session): waits for the statements sent; returns like session_query
sub session_wait
{
	my ($s) = @_;
	my $banner = $s->{banner} // die "session_wait: nothing sent\n";
	$s->{timer}->start($PostgreSQL::Test::Utils::timeout_default);
	$s->{run}->pump
	  until ($s->{out} =~ /^\Q$banner\E\n/m && $s->{err} =~ /^\Q$banner\E\n/m)
	  || $s->{timer}->is_expired;
	die "session_wait timed out: $s->{err}" if $s->{timer}->is_expired;
	my ($out, $err) = ($s->{out}, $s->{err});
	s/^\Q$banner\E\n//m, s/\n\z// for $out, $err;
	$s->{banner} = undef;
	return wantarray ? ($out, $err) : $out;
}

# session_quit(session): ends psql.
sub session_quit
{
	my ($s) = @_;
	$s->{in} .= "\\q\n";
	$s->{run}->finish;
	return;
}

# sqlstate(stderr): the SQLSTATE of the first error psql printed
# (VERBOSITY verbose: "psql:<stdin>:3: ERROR:  42501: ..."), or '' if
# there is none.
sub sqlstate
{
	my ($err) = @_;
	return ($err // '') =~ /\b(?:ERROR|FATAL):\s+([0-9A-Z]{5}):/ ? $1 : '';
}

# prom_scrape(url): the metrics of a Prometheus text exposition as
# {"name{label=\"value\",...}" => value} (labels as written) and
# {name => [[{label => value}, value], ...]}; dies unless the answer is 200.
sub prom_scrape
{
	my ($url) = @_;
	my $res = $http->get($url);
	die "GET $url: $res->{status} $res->{content}" unless $res->{success};
	my (%raw, %by_name);
	for my $line (split /\n/, $res->{content})
	{
		next if $line =~ /^#/ || $line !~ /\S/;
		my ($series, $value) = $line =~ /^(\S+?(?:\{.*\})?)\s+(\S+)(?:\s+\d+)?$/ or next;
		$raw{$series} = $value;
		my ($name, $labels) = $series =~ /^([^{]+)(?:\{(.*)\})?$/;
		my %l = ($labels // '') =~ /(\w+)="((?:[^"\\]|\\.)*)"/g;
		push @{ $by_name{$name} }, [ \%l, $value ];
	}
	return (\%raw, \%by_name);
}

1;
