# test/reliability/Reliability.pm: helpers of the reliability suites
# (test/reliability/r0*.pl), on top of test/perl/QesTest.pm.
#
# The suites kill the worker, crash or stop servers while requests run, so
# every SQL the test itself sends is retried until the server answers again
# (rpsql), and requests are created with ids chosen here, so that a retried
# create is safe.
#
# r01, r02 and r04 run against either provider: QES_PROVIDER=skribble (the
# default) or yousign (r0*_yousign.pl set it) chooses the double that
# start_provider starts; the helpers below that talk to a double (rnode,
# rcreate, rsign, exactly_once, set_latency, api_faults, ...) follow the
# double they are given (its {provider}), so r03 and r05 stay on Skribble.
package Reliability;

use strict;
use warnings;
use Exporter 'import';
use POSIX ();
use Time::HiRes qw(time usleep sleep);
use QesTest;
use PostgreSQL::Test::Utils;
use Test::More;
use JSON::PP ();
use Cwd ();
use File::Basename ();
use PostgreSQL::Test::Cluster;

our @EXPORT = qw(full scaled rpsql rcreate rsign count_where new_uuid rnode sign_in_batches fixture_node
  creates_per_request start_killer finish_killer log_deaths counts_line bucket_check status_counts
  provider provider_name start_provider set_latency created_at_double exactly_once exactly_once_ok
  once_counts outcome_counts api_faults api_fault_kinds failover_faults recorded_where lookup_key save_stats);

# full(): true with QES_SCALE=full (the issue's numbers); else the reduced scale.
sub full { return (($ENV{QES_SCALE} // '') eq 'full') ? 1 : 0; }

# scaled(full_value, reduced_value)
sub scaled { return full() ? $_[0] : $_[1]; }


# ---- The provider

# provider(): the provider of this run, QES_PROVIDER: skribble (default) or yousign
sub provider
{
	my $p = $ENV{QES_PROVIDER} || 'skribble';
	die "QES_PROVIDER must be skribble or yousign, not $p\n" unless $p =~ /^(skribble|yousign)$/;
	return $p;
}

# pv(double or node): the provider a double (or a node made by rnode) stands for
sub pv { return (ref $_[0] && $_[0]{qes_provider}) || 'skribble'; }

# provider_name(double): Skribble or Yousign, for test names and notes
sub provider_name { return ucfirst(pv($_[0])); }

# start_provider(option => value...): the double of provider() (options of
# that double), marked with the provider
sub start_provider
{
	my (%opt) = @_;
	my $d = provider() eq 'yousign' ? start_yousign(%opt) : start_double(%opt);
	$d->{qes_provider} = provider();
	return $d;
}

# set_latency(double, ms): the delay the double adds to every API answer
sub set_latency
{
	my ($d, $ms) = @_;
	return pv($d) eq 'yousign' ? ctl_post($d, 'options', { latency_ms => 0 + $ms }) : ctl_post($d, 'latency', { ms => 0 + $ms });
}

# created_at_double(double, stats = double_stats): {our id => creates the
# double stored} (Skribble: creates_by_custom; Yousign: the drafts,
# created_by_external_id)
sub created_at_double
{
	my ($d, $st) = @_;
	$st //= double_stats($d);
	return (pv($d) eq 'yousign' ? $st->{created_by_external_id} : $st->{creates_by_custom}) // {};
}

# save_stats(double, stats = double_stats): the double's counters to
# tmp_check/log/<script>_stats.json, for a look at calls_by_status afterwards
sub save_stats
{
	my ($d, $st) = @_;
	$st //= double_stats($d);
	my $file = "$PostgreSQL::Test::Utils::log_path/" . File::Basename::basename($0, '.pl') . '_stats.json';
	open my $fh, '>', $file or die "$file: $!";
	print $fh JSON::PP->new->canonical->pretty->encode($st);
	close $fh;
	return $st;
}

# lookup_key(double): what a create whose answer was lost is found by
sub lookup_key { return pv($_[0]) eq 'yousign' ? 'external_id' : 'custom'; }

# exactly_once(double, ids): what the double counted per request:
# {max_creates, created_twice, max_activations, activated_twice (Yousign:
# activate is the step that starts the signing; undef for Skribble), twice
# (ids created or activated more than once), not_once (requests not created,
# and for Yousign activated, exactly once)}
sub exactly_once
{
	my ($d, $ids) = @_;
	my $st = double_stats($d);
	my $c = created_at_double($d, $st);
	my $a = pv($d) eq 'yousign' ? ($st->{activated_by_external_id} // {}) : undef;
	my %o = (max_creates => 0, created_twice => 0, not_once => 0, twice => []);
	if ($a) { $o{max_activations} = 0; $o{activated_twice} = 0; }
	for my $id (@$ids)
	{
		my ($nc, $na) = ($c->{$id} // 0, $a ? $a->{$id} // 0 : 1);
		$o{max_creates} = $nc if $nc > $o{max_creates};
		$o{created_twice}++ if $nc > 1;
		if ($a)
		{
			$o{max_activations} = $na if $na > $o{max_activations};
			$o{activated_twice}++ if $na > 1;
		}
		push @{ $o{twice} }, $id if $nc > 1 || $na > 1;
		$o{not_once}++ if $nc != 1 || $na != 1;
	}
	return \%o;
}

# exactly_once_ok(double, ids, name): each request created (Yousign: and
# activated) exactly once at the double; returns exactly_once's hash
sub exactly_once_ok
{
	my ($d, $ids, $name) = @_;
	local $Test::Builder::Level = $Test::Builder::Level + 1;
	my $o = exactly_once($d, $ids);
	if (pv($d) ne 'yousign')
	{
		creates_once_ok($d, $ids, $name);
		return $o;
	}
	my @t = @{ $o->{twice} };
	ok($o->{not_once} == 0, $name // 'each request created and activated exactly once at Yousign')
	  or diag("created or activated more than once: @t[0 .. ($#t < 9 ? $#t : 9)]; created twice: $o->{created_twice}, "
		  . "activated twice: $o->{activated_twice}; not created and activated exactly once: $o->{not_once}");
	return $o;
}

# once_counts(double, exactly_once hash): the COUNTS entries of it
sub once_counts
{
	my ($d, $o) = @_;
	my $p = pv($d);
	return ("created_at_${p}_max_per_request" => $o->{max_creates},
		defined $o->{max_activations} ? ("activated_at_${p}_max_per_request" => $o->{max_activations}) : (),
		created_twice => $o->{created_twice},
		defined $o->{activated_twice} ? (activated_twice => $o->{activated_twice}) : (),
		not_created_exactly_once => $o->{not_once});
}

# outcome_counts(double, exactly_once hash, requests, archived): the COUNTS
# entries every lifecycle suite starts with: provider, requests, archived,
# the exactly-once counts, lost
sub outcome_counts
{
	my ($d, $o, $n, $archived) = @_;
	return (provider => provider(), requests => $n, archived => $archived,
		once_counts($d, $o), lost => $n - $archived);
}

# api_faults(double, seed): r02's fault mix, about 20 % of the calls.
# Skribble: 503 (later 500), 429 with Retry-After, timeouts past
# qes_sign.http_timeout (2 s), connections cut after a stored create.
# Yousign (about 17 calls a request, 5 of them steps of the create):
# 503 (later 500); 429 with Retry-After (1 %: each pauses every Yousign
# call for a second, _yousign_limits); timeouts of 1.5 s, below
# qes_sign.http_timeout (the double then answers 504); and connections cut
# after each of the four create steps, applied (draft stored, document
# uploaded, signer added, request activated).
sub api_faults
{
	my ($d, $seed) = @_;
	return (error_rate => 0.11, error_status => 503, rate_limit_rate => 0.05, retry_after => 1,
		timeout_rate => 0.04, timeout_ms => 3000, drop_after_create_rate => 0.05, seed => $seed)
	  if pv($d) ne 'yousign';
	return (error_rate => 0.14, error_status => 503, rate_limit_rate => 0.01, retry_after => 1,
		timeout_rate => 0.04, timeout_ms => 1500, drop_after_create_rate => 0.1, drop_after_upload_rate => 0.1,
		drop_after_signer_rate => 0.05, drop_after_activate_rate => 0.1, seed => $seed);
}

# api_fault_kinds(double): the faults_injected counters r02 expects above 0
sub api_fault_kinds
{
	return (qw(error rate_limit timeout drop_after_create),
		pv($_[0]) eq 'yousign' ? qw(drop_after_upload drop_after_signer drop_after_activate) : ());
}

# failover_faults(double): r04's faults while the second wave is created:
# the connection cut after a third of the creates (Yousign: also a fifth of
# the uploads and activations), each stored at the double
sub failover_faults
{
	return { drop_after_create_rate => 0.3, seed => 11 } if pv($_[0]) ne 'yousign';
	return { drop_after_create_rate => 0.3, drop_after_upload_rate => 0.2, drop_after_activate_rate => 0.2, seed => 11 };
}

# recorded_where(double): SQL condition on signatur_anfragen: the node knows
# the request's create (Skribble: its id; Yousign: its id or its draft)
sub recorded_where
{
	return 'provider_id IS NOT NULL' if pv($_[0]) ne 'yousign';
	return q{(provider_id IS NOT NULL OR EXISTS (SELECT 1 FROM qes_sign.work_items w
	          WHERE w.request_id = signatur_anfragen.id AND w.kind = 'submit' AND w.payload ? 'draft'))};
}

sub new_uuid
{
	my @b = map { int(rand(256)) } 1 .. 16;
	$b[6] = ($b[6] & 0x0f) | 0x40;
	$b[8] = ($b[8] & 0x3f) | 0x80;
	my $h = join('', map { sprintf('%02x', $_) } @b);
	return join('-', substr($h, 0, 8), substr($h, 8, 4), substr($h, 12, 4), substr($h, 16, 4), substr($h, 20));
}

# rpsql(node, sql, timeout = 120): stdout of sql; retried while the server
# does not answer (crash restart, failover); dies after timeout.
sub rpsql
{
	my ($node, $sql, $timeout) = @_;
	my $deadline = time + ($timeout // 120);
	my ($out, $err);
	while (1)
	{
		($out, $err) = ('', '');
		my $rc = $node->psql('postgres', $sql, stdout => \$out, stderr => \$err,
			on_error_stop => 1);
		return $out if $rc == 0;
		die "rpsql failed for good: $sql\n$err" if time > $deadline;
		usleep(250_000);
	}
}

sub count_where
{
	my ($node, $where) = @_;
	return rpsql($node, "SELECT count(*) FROM qes_sign.signatur_anfragen WHERE $where");
}

# rcreate(node, n, tag, batch = 50): n requests with 2 signers and ids chosen
# here, at the provider of the node (rnode); a batch that fails is sent
# again without the ids already stored.
sub rcreate
{
	my ($node, $n, $tag, $batch) = @_;
	$batch //= 50;
	my $yousign = pv($node) eq 'yousign';
	# Yousign: a PDF 1.6 or later with a page, a mobile number for QES
	my $doc = unpack('H*', $yousign ? yousign_pdf() : test_pdf());
	my @ids = map { new_uuid() } 1 .. $n;
	my $signers = "jsonb_build_array("
	  . join(', ', map {
		"jsonb_build_object('first_name', 'Signer', 'last_name', 'Nummer $_', 'email', 'signer$_\@example.org'"
		  . ($yousign ? ", 'mobile', '+49 151 1000000$_'" : '') . ')'
	  } 1 .. 2) . ')';
	my $provider = $yousign ? ", provider => 'yousign'" : '';
	for (my $i = 0; $i < @ids; $i += $batch)
	{
		my $last = $i + $batch - 1;
		$last = $#ids if $last > $#ids;
		my @part = @ids[ $i .. $last ];
		my $arr = 'ARRAY[' . in_list(@part) . ']::uuid[]';
		rpsql($node, qq{
			SELECT count(qes_sign.create_request('hv-test', 'Mietvertrag $tag Nr. ' || ($i + t.i),
			       '\\x$doc'::bytea, $signers, id => t.u$provider))
			  FROM unnest($arr) WITH ORDINALITY AS t(u, i)
			 WHERE NOT EXISTS (SELECT 1 FROM qes_sign.signatur_anfragen a WHERE a.id = t.u)});
	}
	return @ids;
}

# rsign(double, node, ids): every current signer of each request signs at the
# double (the requests must have their provider id); returns the refusals.
sub rsign
{
	my ($d, $node, $ids) = @_;
	return rsign_yousign($d, $node, $ids) if pv($d) eq 'yousign';
	my $failed = 0;
	my $out = rpsql($node, q{
		SELECT a.provider_id, s.email FROM qes_sign.signatur_anfragen a
		  JOIN qes_sign.signers s ON s.request_id = a.id AND s.status <> 'replaced'
		 WHERE a.id IN (} . in_list(@$ids) . q{)
		 ORDER BY a.id, s.sequence NULLS FIRST, s.position});
	for my $row (map { [ split /\|/ ] } grep { length } split /\n/, $out)
	{
		my $st = signer_action($d, $row->[0], $row->[1], 'sign');
		next if $st == 200;
		diag("$row->[1] could not sign $row->[0] at the double: HTTP $st");
		$failed++;
	}
	return $failed;
}

# rsign_yousign(double, node, ids): rsign at Yousign: the signers of the
# request the node recorded (provider_id) sign in the double's order
# (ordered signers for QES)
sub rsign_yousign
{
	my ($y, $node, $ids) = @_;
	my $failed = 0;
	my $out = rpsql($node, 'SELECT id, provider_id FROM qes_sign.signatur_anfragen WHERE id IN ('
		  . in_list(@$ids) . ') ORDER BY id');
	for my $row (map { [ split /\|/ ] } grep { length } split /\n/, $out)
	{
		my ($id, $sr) = @$row;
		my $at = $sr && eval { ctl_get($y, "signature_requests/$sr") };
		unless ($at)
		{
			diag("$id (" . ($sr // 'no provider id') . ") is not at the double");
			$failed++;
			next;
		}
		for my $s (@{ $at->{_double}{signers} // [] })
		{
			my $code = yousign_action($y, $sr, $s->{info}{email}, 'sign');
			next if $code == 200 || $code == 201;
			diag("$s->{info}{email} could not sign $sr ($id) at the double: HTTP $code");
			$failed++;
		}
	}
	return $failed;
}

# status_counts(node, ids): "status=n ..." of the given requests.
sub status_counts
{
	my ($node, $ids) = @_;
	my $out = rpsql($node, 'SELECT status, count(*) FROM qes_sign.signatur_anfragen WHERE id IN ('
		  . in_list(@$ids) . ') GROUP BY 1 ORDER BY 1');
	return join(' ', map { s/\|/=/r } grep { length } split /\n/, $out);
}

# start_killer(node, kills, min_gap, max_gap, file): a child process that
# kill -9s the node's qes_sign worker `kills` times, each after a random gap
# (seconds) and only once a worker runs again; writes one line per kill
# "pid <tab> epoch <tab> requests not archiviert" to file.  Returns its pid.
sub start_killer
{
	my ($node, $kills, $min, $max, $file) = @_;
	unlink $file;
	my $pid = fork() // die "fork: $!";
	return $pid if $pid;
	# the child: no END blocks (they would stop the nodes and the helpers)
	my $ok = eval {
		my $last = '';
		for my $k (1 .. $kills)
		{
			sleep($min + rand($max - $min));
			my $wp = '';
			my $deadline = time + 60;
			while (time < $deadline)
			{
				my ($o, $e) = ('', '');
				$node->psql('postgres',
					"SELECT pid FROM pg_stat_activity WHERE backend_type = 'qes_sign worker'",
					stdout => \$o, stderr => \$e);
				$wp = $o if $o =~ /^\d+$/ && $o ne $last;
				last if $wp;
				usleep(100_000);
			}
			last unless $wp;
			my ($o, $e) = ('', '');
			$node->psql('postgres',
				"SELECT count(*) FROM qes_sign.signatur_anfragen WHERE status <> 'archiviert'",
				stdout => \$o, stderr => \$e);
			kill 'KILL', $wp;
			open my $fh, '>>', $file or die;
			printf $fh "%d\t%.3f\t%s\n", $wp, time, $o;
			close $fh;
			$last = $wp;
		}
		1;
	};
	print STDERR "killer: $@" unless $ok;
	POSIX::_exit(0);
}

# finish_killer(pid, file): waits for the killer; returns its kills as [pid, time, open].
sub finish_killer
{
	my ($pid, $file) = @_;
	waitpid($pid, 0);
	open my $fh, '<', $file or return ();
	return map { chomp; [ split /\t/ ] } <$fh>;
}

# log_deaths(node): processes the postmaster reported as terminated by a
# signal: list of [pid, signal, line]; and the number of crash reinitializations.
sub log_deaths
{
	my ($node) = @_;
	my $log = slurp_file($node->logfile);
	my @d;
	for my $line (split /\n/, $log)
	{
		next unless $line =~ /terminated by signal (\d+)/;
		my $sig = $1;
		my ($pid) = $line =~ /\(PID (\d+)\)/;
		push @d, [ $pid // '', $sig, $line ];
	}
	my $reinit = () = $log =~ /all server processes terminated; reinitializing/g;
	my $panic  = () = $log =~ /\bPANIC:/g;
	return (\@d, $reinit, $panic);
}

# bucket_check(node, s3, ids): compares the archive_objects of the requests
# with the bucket read by boto3 (check.py sums).  Returns a hash:
# verified (rows), missing (in the table, not in the bucket or another
# digest), stray (in the bucket under hv-test/ but not in the table),
# incomplete (archiviert requests without 4 verified objects).
sub bucket_check
{
	my ($node, $s3, $ids) = @_;
	my $list = in_list(@$ids);
	my %db = map { my @c = split /\|/; ($c[0] => $c[1]) } grep { length } split /\n/, rpsql($node,
		"SELECT o.key, encode(o.sha256, 'hex') FROM qes_sign.archive_objects o "
		  . "WHERE o.verified_at IS NOT NULL AND o.request_id IN ($list)");
	# s3rver answers 500 to a listing of some thousands of objects: list and
	# read the bucket by narrower prefixes (year and first hex digit of the id)
	my %years = map { m{^hv-test/(\d{4})/} ? ($1 => 1) : () } keys %db;
	$years{ (gmtime)[5] + 1900 } = 1;
	my %bucket;
	for my $y (sort keys %years)
	{
		for my $h (0 .. 9, 'a' .. 'f')
		{
			my $r = s3_check($s3, 'sums', "hv-test/$y/$h");
			die "check.py sums hv-test/$y/$h: " . JSON::PP::encode_json($r->{error}) . "\n" if $r->{error};
			$bucket{ $_->{key} } = $_ for @{ $r->{objects} };
		}
	}
	my $other = s3_check($s3, 'list', 'hv-test/' . ((gmtime)[5] + 1900 + 50));    # nothing expected there
	die "check.py list: " . JSON::PP::encode_json($other->{error}) . "\n" if $other->{error};
	my @missing = grep {
		!$bucket{$_} || $bucket{$_}{sha256} ne $db{$_}
		  || ($bucket{$_}{metadata_sha256} // '') ne $db{$_}
	} sort keys %db;
	my @stray = grep { !exists $db{$_} } sort keys %bucket;
	my @half = grep { ($bucket{$_}{metadata_sha256} // '') ne ($bucket{$_}{sha256} // 'x') } sort keys %bucket;
	my $incomplete = rpsql($node,
		"SELECT count(*) FROM qes_sign.signatur_anfragen a WHERE a.id IN ($list) AND a.status = 'archiviert' "
		  . "AND (SELECT count(*) FROM qes_sign.archive_objects o WHERE o.request_id = a.id "
		  . "AND o.verified_at IS NOT NULL) <> 4");
	return {
		verified => scalar(keys %db), bucket => scalar(keys %bucket), missing => \@missing,
		stray => \@stray, half => \@half, incomplete => $incomplete };
}

# rnode(name, double, s3, [conf => {...}], qes_node options...): a cluster
# with the worker as the suites want it, against the double's provider (a
# Yousign double: the default provider, its webhooks to the node's relay):
# reconciliation every 5 s, retries at most 2 s apart, connections for the
# test's own sessions; conf adds to that or overrides it.
sub rnode
{
	my ($name, $d, $s3, %o) = @_;
	my $conf = delete $o{conf} // {};
	my $yousign = pv($d) eq 'yousign';
	my $node = qes_node($name, ($yousign ? (yousign => $d) : (double => $d)), s3 => $s3, %o,
		conf => { 'qes_sign.reconcile_interval' => "'5s'", 'qes_sign.retry_max_delay' => "'2s'",
			max_connections => 60, ($yousign ? ('qes_sign.provider' => "'yousign'") : ()), %$conf });
	$node->{qes_provider} = pv($d);
	return $node;
}

# fixture_node(name): a cluster with the regress settings (test/qes_sign.conf:
# no worker, no Skribble) and the shared fixtures of fixtures.sql (schema rt)
sub fixture_node
{
	my ($name) = @_;
	my $here = File::Basename::dirname(Cwd::abs_path(__FILE__));
	my $node = PostgreSQL::Test::Cluster->new($name);
	$node->init;
	$node->append_conf('postgresql.conf', slurp_file("$here/../qes_sign.conf") . "\nmax_connections = 20\n");
	$node->start;
	$node->safe_psql('postgres', slurp_file("$here/fixtures.sql"));
	return $node;
}

# sign_in_batches(node, double, n, prefix, timeout, [before]): creates n
# requests in batches (50; reduced 20), waits until each batch is submitted
# (up to timeout seconds) and lets all signers sign it; before->(ids so
# far) runs before each batch.  Returns (ids, number of batches); dies if
# a batch is not submitted or a signature is refused.
sub sign_in_batches
{
	my ($node, $d, $n, $prefix, $timeout, $before) = @_;
	my (@ids, $batches);
	$batches = 0;
	while (@ids < $n)
	{
		$before->(\@ids) if $before;
		my @b = rcreate($node, scaled(50, 20), "$prefix-" . $batches++, 50);
		push @ids, @b;
		wait_until($node, "SELECT count(*) FROM qes_sign.signatur_anfragen WHERE provider_id IS NOT NULL AND id IN ("
			  . in_list(@b) . ')', scalar(@b), $timeout)
		  or die "batch not submitted: " . status_counts($node, \@b) . "\n";
		my $refused = rsign($d, $node, \@b);
		die "$refused signatures refused\n" if $refused;
	}
	return (\@ids, $batches);
}

# creates_per_request(double, ids): the most creates the double counted for
# one of the requests, and how many requests were not created exactly once
sub creates_per_request
{
	my ($d, $ids) = @_;
	my $by = double_stats($d)->{creates_by_custom} // {};
	my $max = 0;
	for (@$ids) { $max = $by->{$_} if ($by->{$_} // 0) > $max; }
	return ($max, scalar(grep { ($by->{$_} // 0) != 1 } @$ids));
}

# counts_line(suite, [key => value]...): the summary line, printed as a note and returned.
sub counts_line
{
	my ($suite, @kv) = @_;
	my $line = "COUNTS $suite:";
	while (my ($k, $v) = splice(@kv, 0, 2)) { $line .= " $k=$v"; }
	diag($line);
	return $line;
}

1;
