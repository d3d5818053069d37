//! The `mysql` sink against real servers: a throwaway MariaDB from Debian's package, and a
//! real MySQL 8 or MariaDB as well when `STEVEDORE_MYSQL_URL` is set.
//!
//! The sink itself is still being built (issue 26); what is here checks the server the
//! sink's tests will run against: password logins over TCP, and the settings the sink's two
//! load paths depend on.

use testkit::mariadb::{MariaDbServer, MysqlTarget};

#[test]
fn mysql_test_server_takes_password_logins_and_local_infile() {
    let server = MariaDbServer::shared();
    let target = MysqlTarget::test_server();
    let table = target.table("probe");
    target.recreate(
        &table,
        &format!("CREATE TABLE {table} (id INT PRIMARY KEY, name VARCHAR(20))"),
    );
    target.execute(&format!(
        "INSERT INTO {table} VALUES (1, 'tab\there'), (2, NULL)"
    ));
    assert_eq!(
        target.query(&format!("SELECT id, name FROM {table} ORDER BY id")),
        vec!["1\ttab\there".to_string(), "2\tNULL".to_string()]
    );
    assert_eq!(target.count(&table), 2);
    assert_eq!(target.query("SELECT @@GLOBAL.local_infile"), vec!["1"]);
    // The password is checked: the same login with another one is refused.
    let wrong = std::process::Command::new("mariadb")
        .args(["--no-defaults", "--protocol=TCP", "-h", "127.0.0.1"])
        .args([
            "-P",
            &server.port.to_string(),
            "-u",
            "stevedore",
            "-e",
            "SELECT 1",
        ])
        .env("MYSQL_PWD", "not-the-password")
        .output()
        .expect("mariadb runs");
    assert!(!wrong.status.success(), "a wrong password was let in");
    assert!(
        String::from_utf8_lossy(&wrong.stderr).contains("Access denied"),
        "{}",
        String::from_utf8_lossy(&wrong.stderr)
    );
    target.execute(&format!("DROP TABLE {table}"));
}
