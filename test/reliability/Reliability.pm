# test/reliability/Reliability.pm: helpers of the reliability suites
# (test/reliability/r0*.pl), on top of test/perl/QesTest.pm.
#
# The suites kill the worker, crash or stop servers while requests run, so
# every SQL the test itself sends is retried until the server answers again
# (rpsql), and requests are created with ids chosen here, so that a retried
# create is safe.
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
  creates_per_request start_killer finish_killer log_deaths counts_line bucket_check status_counts);

# full(): true with QES_SCALE=full (the issue's numbers); else the reduced scale.
sub full { return (($ENV{QES_SCALE} // '') eq 'full') ? 1 : 0; }

# scaled(full_value, reduced_value)
sub scaled { return full() ? $_[0] : $_[1]; }


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
# here; a batch that fails is sent again without the ids already stored.
sub rcreate
{
	my ($node, $n, $tag, $batch) = @_;
	$batch //= 50;
	my $doc = unpack('H*', test_pdf());
	my @ids = map { new_uuid() } 1 .. $n;
	my $signers = "jsonb_build_array("
	  . join(', ', map {
		"jsonb_build_object('first_name', 'Signer', 'last_name', 'Nummer $_', 'email', 'signer$_\@example.org')"
	  } 1 .. 2) . ')';
	for (my $i = 0; $i < @ids; $i += $batch)
	{
		my $last = $i + $batch - 1;
		$last = $#ids if $last > $#ids;
		my @part = @ids[ $i .. $last ];
		my $arr = 'ARRAY[' . in_list(@part) . ']::uuid[]';
		rpsql($node, qq{
			SELECT count(qes_sign.create_request('hv-test', 'Mietvertrag $tag Nr. ' || ($i + t.i),
			       '\\x$doc'::bytea, $signers, id => t.u))
			  FROM unnest($arr) WITH ORDINALITY AS t(u, i)
			 WHERE NOT EXISTS (SELECT 1 FROM qes_sign.signatur_anfragen a WHERE a.id = t.u)});
	}
	return @ids;
}

# rsign(double, node, ids): every current signer of each request signs at the
# double (the requests must have their Skribble id); returns the refusals.
sub rsign
{
	my ($d, $node, $ids) = @_;
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
# with the worker as the suites want it: reconciliation every 5 s, retries
# at most 2 s apart, connections for the test's own sessions; conf adds to
# that or overrides it.
sub rnode
{
	my ($name, $d, $s3, %o) = @_;
	my $conf = delete $o{conf} // {};
	return qes_node($name, double => $d, s3 => $s3, %o,
		conf => { 'qes_sign.reconcile_interval' => "'5s'", 'qes_sign.retry_max_delay' => "'2s'",
			max_connections => 60, %$conf });
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
