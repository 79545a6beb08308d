# test/reliability/Patroni.pm: one etcd and PostgreSQL nodes managed by
# Patroni (Debian's etcd-server and patroni packages), on loopback, for
# r08_patroni.pl.
#
# Each node is a PostgreSQL::Test::Cluster object that is never init'ed or
# started through Cluster.pm: it only lends its free port, its socket
# directory, its data directory (Patroni bootstraps or clones into it) and
# its log file (the logging collector writes there), so that psql, rpsql,
# wait_until and log_deaths work on it as on any node.  Patroni runs it.
#
# leader_handle(nodes) is an object with the same psql method that sends
# each statement to whichever node holds the leader key at that moment (REST
# GET /primary), so that rpsql, rcreate, rsign and wait_until follow the
# leader across switchovers and failovers.
#
# Every process started here (etcd, patroni, the postmasters Patroni
# started) is ended by its pid when the script ends, also after a failure:
# patroni with SIGTERM (it stops its PostgreSQL), then SIGKILL; a postmaster
# still running after that with pg_ctl stop -m immediate; etcd last.
package Patroni;

use strict;
use warnings;
use Exporter 'import';
use POSIX ();
use File::Basename ();
use File::Path ();
use HTTP::Tiny;
use IPC::Run ();
use JSON::PP;
use Time::HiRes qw(time usleep);
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

our @EXPORT = qw(start_etcd patroni_node start_patroni stop_patroni patroni_get patroni_post
  leader_node wait_leader wait_replica_streaming leader_handle postmaster_pid patronictl
  patroni_history promotions_logged);

my $parent = $$;
# a test stopped by a signal still ends what it started (the END block below)
$SIG{$_} = sub { die "got SIG$_[0]\n" } for qw(INT TERM HUP);
my $json = JSON::PP->new->canonical->pretty;
my $http = HTTP::Tiny->new(timeout => 3);
my @procs;    # {pid, name}: etcd and patroni processes, in start order
my @pnodes;   # the Patroni nodes (their data directories are checked at the end)
my $script = File::Basename::basename($0, '.pl');

# spawn(name, cmd...): cmd with stdout and stderr appended to
# tmp_check/log/<script>_<name>.log; returns its pid
sub spawn
{
	my ($name, @cmd) = @_;
	my $log = "$PostgreSQL::Test::Utils::log_path/${script}_$name.log";
	my $pid = fork() // die "fork: $!";
	if ($pid == 0)
	{
		open STDIN,  '<',  '/dev/null';
		open STDOUT, '>>', $log or POSIX::_exit(127);
		open STDERR, '>&', \*STDOUT;
		{ exec @cmd };
		print STDERR "exec @cmd: $!\n";
		POSIX::_exit(127);
	}
	push @procs, { pid => $pid, name => $name };
	return $pid;
}

sub alive { my ($pid) = @_; return $pid && waitpid($pid, POSIX::WNOHANG()) == 0; }

# finish(pid, signal, seconds): sends signal, waits; SIGKILL after seconds
sub finish
{
	my ($pid, $sig, $secs) = @_;
	return unless alive($pid);
	kill $sig, $pid;
	my $deadline = time + $secs;
	while (time < $deadline)
	{
		return if waitpid($pid, POSIX::WNOHANG()) != 0;
		usleep(50_000);
	}
	kill 'KILL', $pid;
	waitpid($pid, 0);
	return;
}

# start_etcd(): one etcd member on two free loopback ports, data under
# tmp_check; returns {pid, port, url} once /health says true
sub start_etcd
{
	my $client = PostgreSQL::Test::Cluster::get_free_port();
	my $peer   = PostgreSQL::Test::Cluster::get_free_port();
	my $dir    = "$PostgreSQL::Test::Utils::tmp_check/etcd_$script";
	File::Path::rmtree($dir);
	my $url = "http://127.0.0.1:$client";
	my $pid = spawn('etcd', 'etcd', '--name', 'etcd0', '--data-dir', $dir,
		'--listen-client-urls', $url, '--advertise-client-urls', $url,
		'--listen-peer-urls', "http://127.0.0.1:$peer", '--initial-advertise-peer-urls', "http://127.0.0.1:$peer",
		'--initial-cluster', "etcd0=http://127.0.0.1:$peer", '--initial-cluster-state', 'new',
		'--initial-cluster-token', "qes-$script-$$");
	my $deadline = time + 30;
	while (time < $deadline)
	{
		my $r = $http->get("$url/health");
		return { pid => $pid, port => $client, url => $url }
		  if $r->{success} && $r->{content} =~ /"health"\s*:\s*"true"/;
		die "etcd exited at start (see ${script}_etcd.log)\n" unless alive($pid);
		usleep(100_000);
	}
	die "etcd not healthy within 30 s\n";
}

# patroni_node(name, etcd, dcs => {bootstrap.dcs}, parameters => {local
# postgresql.parameters}): a node (PostgreSQL::Test::Cluster, not started)
# with its Patroni configuration written to <basedir>/patroni.yml (JSON,
# which YAML reads); start it with start_patroni
sub patroni_node
{
	my ($name, $etcd, %o) = @_;
	my $node = PostgreSQL::Test::Cluster->new($name);
	my $rest = PostgreSQL::Test::Cluster::get_free_port();
	my $base = $node->basedir;
	my $true = JSON::PP::true;
	my $conf = {
		scope     => "qes_$script",
		namespace => '/qes/',
		name      => $name,
		log       => { level => 'INFO' },
		restapi   => { listen => "127.0.0.1:$rest", connect_address => "127.0.0.1:$rest" },
		etcd3     => { host => "127.0.0.1:$etcd->{port}" },
		bootstrap => {
			dcs    => $o{dcs} // {},
			initdb => [ { encoding => 'UTF8' }, { locale => 'C' } ],
		},
		postgresql => {
			listen          => "127.0.0.1:" . $node->port,
			connect_address => "127.0.0.1:" . $node->port,
			data_dir        => $node->data_dir,
			bin_dir         => `pg_config --bindir` =~ s/\s+$//r,
			pgpass          => "$base/pgpass",
			basebackup      => [ { checkpoint => 'fast' } ],    # a replica clones in a second, not after a spread checkpoint
			use_unix_socket => $true,
			authentication  => {
				superuser   => { username => scalar(getpwuid($<)), password => 'r08-superuser' },
				replication => { username => 'replicator', password => 'r08-replicator' },
			},
			pg_hba => [
				'local all all trust',
				'host all all 127.0.0.1/32 trust',
				'host replication replicator 127.0.0.1/32 trust',
			],
			parameters => {
				unix_socket_directories => $node->host,
				logging_collector       => 'on',
				log_directory           => $PostgreSQL::Test::Utils::log_path,
				log_filename            => File::Basename::basename($node->logfile),
				log_rotation_age        => 0,
				log_rotation_size       => 0,
				%{ $o{parameters} // {} },
			},
		},
		tags => { nofailover => JSON::PP::false, noloadbalance => JSON::PP::false },
	};
	my $yml = "$base/patroni.yml";
	open my $fh, '>', $yml or die "$yml: $!";
	print $fh $json->encode($conf);
	close $fh;
	chmod 0600, $yml;    # it holds the node's secrets
	$node->{patroni} = { rest => "http://127.0.0.1:$rest", yml => $yml, conf => $conf };
	push @pnodes, $node;
	return $node;
}

# start_patroni(node): runs patroni for the node (again after stop_patroni)
sub start_patroni
{
	my ($node) = @_;
	$node->{patroni}{pid} = spawn('patroni_' . $node->name, 'patroni', $node->{patroni}{yml});
	return $node;
}

# stop_patroni(node): SIGTERM to patroni (it stops PostgreSQL fast), SIGKILL after 30 s
sub stop_patroni
{
	my ($node) = @_;
	finish($node->{patroni}{pid}, 'TERM', 30);
	@procs = grep { $_->{pid} != ($node->{patroni}{pid} // 0) } @procs;
	$node->{patroni}{pid} = undef;
	return;
}

# patroni_get(node, path): [HTTP status, decoded JSON or undef] of Patroni's REST API
sub patroni_get
{
	my ($node, $path) = @_;
	my $r = $http->get("$node->{patroni}{rest}$path");
	my $body = $r->{status} < 599 ? eval { decode_json($r->{content}) } : undef;
	return ($r->{status}, $body);
}

# patroni_post(node, path, body, timeout): [HTTP status, text]
sub patroni_post
{
	my ($node, $path, $body, $timeout) = @_;
	my $r = HTTP::Tiny->new(timeout => $timeout // 60)->post("$node->{patroni}{rest}$path",
		{ headers => { 'Content-Type' => 'application/json' }, content => encode_json($body // {}) });
	return ($r->{status}, $r->{content});
}

# leader_node(nodes): the node holding the leader key (GET /primary: 200), or undef
sub leader_node
{
	my (@nodes) = @_;
	for my $n (@nodes)
	{
		my ($st) = patroni_get($n, '/primary');
		return $n if $st == 200;
	}
	return undef;
}

# wait_leader(timeout, nodes): the leader once it holds the key and its
# PostgreSQL accepts writes; dies after timeout seconds
sub wait_leader
{
	my ($timeout, @nodes) = @_;
	my $deadline = time + $timeout;
	while (time < $deadline)
	{
		my $l = leader_node(@nodes);
		if ($l)
		{
			my ($out, $err) = ('', '');
			$l->psql('postgres', 'SELECT pg_is_in_recovery()', stdout => \$out, stderr => \$err);
			return $l if $out eq 'f';
		}
		usleep(200_000);
	}
	die "no leader that accepts writes within $timeout s\n";
}

# wait_replica_streaming(leader, replica, timeout): true once the replica
# runs as a replica (REST /replica 200) and streams from the leader
sub wait_replica_streaming
{
	my ($leader, $replica, $timeout) = @_;
	my $deadline = time + $timeout;
	my $name = $replica->name;
	while (time < $deadline)
	{
		my ($st) = patroni_get($replica, '/replica');
		if ($st == 200)
		{
			my ($out, $err) = ('', '');
			$leader->psql('postgres', "SELECT count(*) FROM pg_stat_replication WHERE application_name = '$name' "
				  . "AND state = 'streaming'", stdout => \$out, stderr => \$err);
			return 1 if $out eq '1';
		}
		usleep(200_000);
	}
	return 0;
}

# postmaster_pid(node): the pid in the data directory's postmaster.pid, or undef
sub postmaster_pid
{
	my ($node) = @_;
	open my $fh, '<', $node->data_dir . '/postmaster.pid' or return undef;
	my $pid = <$fh>;
	chomp $pid if defined $pid;
	return ($pid && $pid =~ /^\d+$/) ? $pid : undef;
}

# patronictl(node, args...): patronictl -c <node's patroni.yml> args; returns (exit code, output)
sub patronictl
{
	my ($node, @args) = @_;
	my ($out, $err) = ('', '');
	IPC::Run::run([ 'patronictl', '-c', $node->{patroni}{yml}, @args ], '<', \undef, '>', \$out, '2>', \$err);
	return ($? >> 8, $out . $err);
}

# patroni_history(node): the cluster's timeline history (GET /history)
sub patroni_history
{
	my ($node) = @_;
	my ($st, $h) = patroni_get($node, '/history');
	return $st == 200 ? $h : [];
}

# promotions_logged(node): the numbers of the LOG lines of _worker_started
# after a promotion ("N creates not yet answered will be looked up ...")
sub promotions_logged
{
	my ($node) = @_;
	my $log = -f $node->logfile ? slurp_file($node->logfile) : '';
	return map { $1 } $log =~ /qes_sign: (\d+) creates not yet answered will be looked up[^\n]*a promotion/g;
}

# leader_handle(nodes...): an object whose psql goes to the current leader
sub leader_handle
{
	my (@nodes) = @_;
	return bless { nodes => \@nodes }, 'Patroni::Leader';
}

END
{
	# only in the test script itself, not in a forked child
	if ($$ == $parent)
	{
		local $?;
		for my $p (reverse grep { $_->{name} =~ /^patroni_/ } @procs)
		{
			finish($p->{pid}, 'TERM', 30);
		}
		for my $n (@pnodes)
		{
			my $pm = postmaster_pid($n);
			next unless $pm && kill(0, $pm);
			system('pg_ctl', '-D', $n->data_dir, '-m', 'immediate', '-w', 'stop');
			kill 'KILL', $pm if kill(0, $pm);
		}
		finish($_->{pid}, 'TERM', 10) for grep { $_->{name} !~ /^patroni_/ } @procs;
	}
}

package Patroni::Leader;

use Time::HiRes qw(time usleep);

# psql(dbname, sql, options): PostgreSQL::Test::Cluster::psql on the current
# leader; without one, exit code 2 and stderr "no leader" (rpsql retries)
sub psql
{
	my ($self, $db, $sql, %p) = @_;
	my $l = Patroni::leader_node(@{ $self->{nodes} });
	unless ($l)
	{
		${ $p{stderr} } = 'no leader' if ref $p{stderr};
		${ $p{stdout} } = '' if ref $p{stdout};
		return 2;
	}
	# psql on a server that goes away under it can die writing the SQL to
	# its stdin (IPC::Run: Broken pipe): a failed attempt like any other
	my $rc = eval { $l->psql($db, $sql, %p) };
	return $rc if defined $rc;
	${ $p{stderr} } = "psql: $@" if ref $p{stderr};
	return 2;
}

sub safe_psql
{
	my ($self, $db, $sql) = @_;
	my $deadline = time + 60;
	while (1)
	{
		my $l = Patroni::leader_node(@{ $self->{nodes} });
		return $l->safe_psql($db, $sql) if $l;
		die "no leader for 60 s\n" if time > $deadline;
		usleep(200_000);
	}
}

sub name { return 'leader'; }

1;
